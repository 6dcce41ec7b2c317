/* The C ABI against files the Rust harness (c_abi.rs) publishes: argv[1] a data
 * directory at seq 1 with w0..w9 counted 4 times (and "top" 9 times, "topper" 7
 * times), argv[2] a directory that does not exist, argv[3] an empty one. Prints
 * "wait 2" and waits for the harness to publish seq 2 (w0..w9 counted 5 times). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "memdb.h"

static int failures = 0;

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__,     \
              __LINE__, #cond, memdb_last_error());                              \
      failures++;                                                                \
    }                                                                            \
  } while (0)

static int count(memdb_reader *r, const char *w, uint64_t *n) {
  return memdb_count(r, w, strlen(w), n);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: reader_test DATA_DIR MISSING_DIR EMPTY_DIR\n");
    return 2;
  }
  int status = 1;
  CHECK(memdb_open(NULL, 0, &status) == NULL && status == MEMDB_ERR_ARGUMENT);
  CHECK(memdb_open(argv[2], 0, &status) == NULL && status == MEMDB_ERR_NOT_FOUND);
  CHECK(strstr(memdb_last_error(), "no such directory") != NULL);
  CHECK(memdb_open(argv[3], 0, &status) == NULL && status == MEMDB_ERR_NOT_MEMDB);
  CHECK(memdb_open(argv[1], 0x80, &status) == NULL && status == MEMDB_ERR_ARGUMENT);

  memdb_reader *r = memdb_open(argv[1], 0, &status);
  CHECK(r != NULL && status == MEMDB_OK);
  if (r == NULL) return 1;
  CHECK(memdb_seq(r) == 1);
  CHECK(memdb_seq(NULL) == 0);

  uint64_t n = 99;
  CHECK(count(r, "W3", &n) == MEMDB_OK && n == 4);
  CHECK(count(r, "absent", &n) == MEMDB_OK && n == 0);
  CHECK(memdb_count_raw(r, "W3", 2, &n) == MEMDB_OK && n == 0);
  CHECK(memdb_count(r, "w3 and more", 2, &n) == MEMDB_OK && n == 4); /* len counts */
  CHECK(count(r, "two words", &n) == MEMDB_ERR_WORD);
  CHECK(strstr(memdb_last_error(), "two words") != NULL);
  CHECK(count(r, "", &n) == MEMDB_ERR_WORD);
  CHECK(memdb_count(r, NULL, 3, &n) == MEMDB_ERR_ARGUMENT);
  CHECK(memdb_count(NULL, "w3", 2, &n) == MEMDB_ERR_ARGUMENT);
  CHECK(count(r, "w3", NULL) == MEMDB_ERR_ARGUMENT);
  CHECK(memdb_count(r, "\xff\xfe", 2, &n) == MEMDB_ERR_ARGUMENT);
  CHECK(strstr(memdb_last_error(), "UTF-8") != NULL);
  CHECK(memdb_count(r, "w3", (size_t)1 << 40, &n) == MEMDB_ERR_ARGUMENT);

  memdb_entry entries[4];
  char words[64];
  int64_t got = memdb_top(r, 3, NULL, 0, entries, 4, words, sizeof words);
  CHECK(got == 3);
  if (got == 3) {
    CHECK(strcmp(entries[0].word, "top") == 0 && entries[0].count == 9);
    CHECK(strcmp(entries[1].word, "topper") == 0 && entries[1].count == 7);
    CHECK(strcmp(entries[2].word, "w0") == 0 && entries[2].count == 4);
    CHECK(entries[1].len == 6);
  }
  got = memdb_top(r, 10, "TOPP", 4, entries, 4, words, sizeof words);
  CHECK(got == 1 && strcmp(entries[0].word, "topper") == 0);
  got = memdb_top(r, 10, NULL, 0, entries, 2, words, sizeof words);
  CHECK(got == 2); /* no more than the entries it has room for */
  got = memdb_top(r, 3, NULL, 0, entries, 4, words, 5);
  CHECK(got == MEMDB_ERR_BUFFER);
  CHECK(strstr(memdb_last_error(), "need") != NULL);
  CHECK(memdb_top(r, 3, NULL, 0, NULL, 4, words, sizeof words) == MEMDB_ERR_ARGUMENT);
  CHECK(memdb_top(r, 3, NULL, 5, entries, 4, words, sizeof words) == MEMDB_ERR_ARGUMENT);

  uint64_t mapped = 0;
  CHECK(memdb_wait_for(r, 2, 20, &mapped) == MEMDB_ERR_TIMEOUT && mapped == 1);
  CHECK(memdb_refresh(r) == 0);

  printf("wait 2\n");
  fflush(stdout);
  CHECK(memdb_wait_for(r, 2, 20000, &mapped) == MEMDB_OK && mapped >= 2);
  CHECK(count(r, "w9", &n) == MEMDB_OK && n == 5);

  memdb_reader *by_hand = memdb_open(argv[1], MEMDB_OPEN_BY_HAND, NULL);
  CHECK(by_hand != NULL && memdb_seq(by_hand) == 2);
  memdb_close(by_hand);
  memdb_close(r);
  memdb_close(NULL);

  if (failures == 0) printf("ok\n");
  return failures == 0 ? 0 : 1;
}
