/* The embedded reader's lookup from C (scripts/bench_readers.py compiles and runs it):
 * reader_bench DATA_DIR WORDS_FILE LOOKUPS. Prints one JSON line: the median of single
 * lookups timed one by one, and lookups per second on one thread. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "memdb.h"

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  FILE *f = fopen(argv[2], "r");
  if (!f) return 2;
  size_t cap = 1 << 20, count = 0;
  char **words = malloc(cap * sizeof *words);
  size_t *lens = malloc(cap * sizeof *lens);
  char line[256];
  while (count < cap && fgets(line, sizeof line, f)) {
    size_t len = strcspn(line, "\n");
    line[len] = 0;
    words[count] = strdup(line);
    lens[count++] = len;
  }
  fclose(f);
  size_t n = (size_t)strtoull(argv[3], NULL, 10);
  int status;
  memdb_reader *r = memdb_open(argv[1], 0, &status);
  if (!r) {
    fprintf(stderr, "%s\n", memdb_last_error());
    return 1;
  }
  uint64_t sum = 0, c;
  for (size_t i = 0; i < count; i++) {
    if (memdb_count(r, words[i], lens[i], &c) != MEMDB_OK) return 1;
    sum += c;
  }
  uint64_t *each = malloc(n * sizeof *each);
  for (size_t i = 0; i < n; i++) {
    size_t k = i % count;
    uint64_t t = now_ns();
    memdb_count(r, words[k], lens[k], &c);
    each[i] = now_ns() - t;
    sum += c;
  }
  uint64_t t = now_ns();
  for (size_t i = 0; i < n; i++) {
    size_t k = i % count;
    memdb_count(r, words[k], lens[k], &c);
    sum += c;
  }
  double per_sec = (double)n / ((double)(now_ns() - t) / 1e9);
  qsort(each, n, sizeof *each, cmp);
  printf("{\"lang\":\"c\",\"how\":\"in-process\",\"p50_ns\":%llu,\"p99_ns\":%llu,"
         "\"per_sec\":%.0f}\n",
         (unsigned long long)each[n / 2], (unsigned long long)each[n * 99 / 100], per_sec);
  fprintf(stderr, "checksum %llu\n", (unsigned long long)sum);
  memdb_close(r);
  return 0;
}
