//! The status page in a real browser: headless Chromium loads `/ui` from each node
//! kind of a running cluster, runs the page's script against the node's JSON routes,
//! and the rendered DOM must show the seq of the last write and its top words. With
//! `--protect-reads` the page is refused without the token and works with it (HTTP
//! Basic, as a browser sends it).
//!
//! Chromium comes from Debian's `chromium` package (`.ci/run` installs it); set
//! `MEMDB_CHROMIUM` to use another binary.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("MEMDB_CHROMIUM") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the status page test needs Chromium: `apt-get install chromium` (what .ci/run \
         does), or MEMDB_CHROMIUM=/path/to/chrome"
    );
}

/// The DOM of `url` once the page's script has run (its timers on virtual time, its
/// fetches real).
fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish rendering {url} within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    reader.join().unwrap()
}

/// The rendered top words table: (word, count) per row.
fn top_rows(dom: &str) -> Vec<(String, u64)> {
    let body = dom
        .split("<tbody id=\"top\">")
        .nth(1)
        .and_then(|r| r.split("</tbody>").next())
        .unwrap_or_default();
    body.split("<tr>")
        .skip(1)
        .filter_map(|row| {
            let cells: Vec<&str> = row
                .split("<td")
                .skip(1)
                .map(|c| c.split_once('>').map_or("", |(_, v)| v))
                .map(|c| c.split("</td>").next().unwrap_or_default())
                .collect();
            Some((cells.get(1)?.to_string(), cells.get(2)?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_new_seq_and_top_words_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    // The whitespace tokenizer keeps markup in words: the page must show it as text.
    let leader = Node::leader(
        dir.path(),
        &["--snapshot-interval", "20ms", "--tokenizer", "whitespace"],
    );
    let replica = Node::replica(&leader.url, &[]);
    let local = Node::local(dir.path(), &[]);
    wait_ready(&replica).await;
    leader.client().post_text("warm up").await.unwrap();
    let seq = leader
        .client()
        .post_text("zebra zebra zebra <b>yak</b> yak quail")
        .await
        .unwrap()
        .seq;
    for node in [&leader, &replica, &local] {
        let c = node.client();
        eventually(&format!("{} at seq {seq}", node.url), || async {
            (c.top(1, "", Some(seq)).await.ok()?.seq == Some(seq)).then_some(())
        })
        .await;
        let dom = rendered(&format!("{}/ui", node.url));
        assert!(
            dom.contains(&format!("<dd id=\"seq\">{seq}</dd>")),
            "{}: the page does not show seq {seq}:\n{dom}",
            node.url
        );
        let rows = top_rows(&dom);
        assert_eq!(
            rows.get(..2),
            Some(
                &[
                    ("zebra".to_string(), 3),
                    ("&lt;b&gt;yak&lt;/b&gt;".to_string(), 1),
                ][..]
            ),
            "{}: {rows:?}",
            node.url
        );
        // A word is text, never markup.
        assert!(!dom.contains("<b>yak"), "{}", node.url);
        assert!(
            dom.contains("<span class=\"err\" id=\"error\"></span>"),
            "{dom}"
        );
    }
    // The leader's page lists its network replica and its local replica, and opens
    // with the node's own past: the samples the node kept before the page was loaded.
    let http = reqwest::Client::new();
    let kept = eventually("the leader to keep three seconds of history", || async {
        let h = get_json(&http, &format!("{}/history", leader.url)).await?;
        let samples = h["samples"].as_array()?.clone();
        let lags = samples.last()?["lags"].clone();
        (samples.len() >= 3 && lags.get(format!("local {}", local.url)).is_some())
            .then_some(samples.len())
    })
    .await;
    let dom = rendered(&format!("{}/", leader.url));
    assert!(dom.contains(&replica.url), "{dom}");
    let locals = dom
        .split("<tbody id=\"locals\">")
        .nth(1)
        .and_then(|r| r.split("</tbody>").next())
        .unwrap_or_default();
    assert!(
        locals.contains(&local.url) && locals.contains("local-replica"),
        "the page does not list the local replica: {dom}"
    );
    let shown: usize = dom
        .split("data-history=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the page loaded no history: {dom}"));
    assert!(
        shown >= kept,
        "the page showed {shown} samples of {kept} kept"
    );
}

/// The page's tick function (between its `ticks:begin` and `ticks:end` markers), run
/// in the browser on its own over many scales: every label distinct, the steps 1, 2
/// or 5 times a power of ten (at least 1 for counts), the axis covering the maximum
/// with two to four steps.
#[test]
fn the_charts_axis_labels_are_distinct_and_readable_at_every_scale() {
    let page = memdb::server::ui::PAGE;
    let begin = page.find("// ticks:begin").expect("the ticks:begin marker");
    let end = page.find("// ticks:end").expect("the ticks:end marker");
    let code = &page[begin..end];
    let maxima = [
        0.0,
        0.001,
        0.3,
        0.5,
        1.0,
        1.5,
        2.0,
        3.0,
        7.0,
        10.0,
        11.0,
        99.0,
        100.0,
        999.0,
        1000.0,
        1001.0,
        12_345.0,
        99_999.0,
        250_000.0,
        2_500_000.0,
        7.5e9,
    ];
    let cases = maxima.map(|m| m.to_string()).join(",");
    let html = format!(
        "<!doctype html><html><body><pre id=\"out\"></pre><script>{code}\n\
         const out = [];\n\
         for (const max of [{cases}]) for (const integer of [true, false]) {{\n\
           const t = ticks(max, integer);\n\
           out.push([max, integer, t.step, t.values.join(' '), t.labels.join('|')].join(';'));\n\
         }}\n\
         document.getElementById('out').textContent = out.join('\\n');\n\
         </script></body></html>"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticks.html");
    std::fs::write(&file, html).unwrap();
    let dom = rendered(&format!("file://{}", file.display()));
    let out = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| panic!("no output: {dom}"));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), maxima.len() * 2, "{out}");
    for line in lines {
        let f: Vec<&str> = line.split(';').collect();
        let (max, integer, step): (f64, bool, f64) =
            (f[0].parse().unwrap(), f[1] == "true", f[2].parse().unwrap());
        let values: Vec<f64> = f[3].split(' ').map(|v| v.parse().unwrap()).collect();
        let labels: Vec<&str> = f[4].split('|').collect();
        let mut distinct = labels.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), labels.len(), "labels repeat: {line}");
        let top = *values.last().unwrap();
        assert!(
            top >= max && values[0] == 0.0,
            "the axis does not cover {max}: {line}"
        );
        assert!(
            (2..=5).contains(&values.len()),
            "{} ticks: {line}",
            values.len()
        );
        let mantissa = step / 10f64.powf(step.log10().floor());
        assert!(
            [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-9),
            "step {step}: {line}"
        );
        if integer {
            assert!(step >= 1.0, "a count's step below 1: {line}");
        }
        // Each label reads as its value (with a k, M or G suffix).
        for (v, l) in values.iter().zip(&labels) {
            let (num, unit) = match l.chars().last().unwrap() {
                'k' => (&l[..l.len() - 1], 1e3),
                'M' => (&l[..l.len() - 1], 1e6),
                'G' => (&l[..l.len() - 1], 1e9),
                _ => (&l[..], 1.0),
            };
            let read: f64 = num.parse::<f64>().unwrap() * unit;
            assert!(
                (read - v).abs() <= v.abs() * 1e-9 + 1e-12,
                "{l} is not {v}: {line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_protect_reads_the_page_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let leader = Node::leader(
        dir.path(),
        &["--auth-token", "s3cret-token", "--protect-reads"],
    );
    let c = leader
        .client()
        .with_token(memdb::server::auth::Token::new("s3cret-token"));
    let seq = c.post_text("guarded guarded words").await.unwrap().seq;
    let http = reqwest::Client::new();
    let resp = http.get(format!("{}/ui", leader.url)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenges: Vec<_> = resp.headers().get_all("www-authenticate").iter().collect();
    assert!(
        challenges
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("Basic"))
    );
    let wrong = rendered(&format!("http://u:wrong@{}/ui", leader.addr));
    assert!(
        !wrong.contains("id=\"seq\""),
        "a wrong token must not see the page"
    );
    let dom = rendered(&format!("http://u:s3cret-token@{}/ui", leader.addr));
    assert!(dom.contains(&format!("<dd id=\"seq\">{seq}</dd>")), "{dom}");
    assert_eq!(top_rows(&dom)[0], ("guarded".to_string(), 2));
}
