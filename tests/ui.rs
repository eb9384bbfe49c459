//! The web UI in a real browser (headless Chromium over the DevTools pipe) against a running
//! node with known data: a search given in the URL shows its records newest first with the
//! matches marked and a chart whose bars add up to the same count, stacked by topic; ignoring
//! case, regexes, oldest first, "Older" paging, the topic picker, a record's context on click
//! and zooming into a bar work; a bad regex shows the node's message; the live tail follows new
//! records and pauses; and no JavaScript error happens on the way.
//!
//! `OKLOG_UI_SCREENSHOT=path.png` also saves a screenshot of the first search (the README's).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::Browser;
use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The `<topic> <payload>` text of a stored line.
fn text(record: &[u8]) -> String {
    String::from_utf8_lossy(&record[27..record.len() - 1]).into_owned()
}

/// Records per page of a newest-first search in the UI.
const PAGE: usize = 1000;

/// Two store segments, the LogHub Apache sample under topic `apache` and the OpenSSH one under
/// `openssh`, each spread over the last 50 minutes (ingest could only stamp it all with the
/// current second), so the chart has a shape to show.
fn write_last_hour(store: &std::path::Path) {
    std::fs::create_dir_all(store).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let start = now - 50 * 60_000;
    for (k, (topic, file)) in [("apache", "Apache_2k.log"), ("openssh", "OpenSSH_2k.log")]
        .iter()
        .enumerate()
    {
        let input = std::fs::read_to_string(loghub().join(file)).unwrap();
        let lines: Vec<&str> = input.lines().collect();
        let step = 50 * 60_000 / lines.len() as u64;
        let mut body = String::new();
        let mut ids = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            // Half a step apart: the two topics interleave.
            let ms = start + i as u64 * step + k as u64 * step / 2;
            let id = oklog::record::encode_ulid(ms, (k * 10_000 + i) as u128);
            let id = String::from_utf8(id.to_vec()).unwrap();
            body.push_str(&format!("{id} {topic} {line}\n"));
            ids.push(id);
        }
        let name = format!("{}-{}.flushed", ids[0], ids[ids.len() - 1]);
        std::fs::write(store.join(name), body).unwrap();
    }
}

/// The `<topic> <payload>` texts of the table's rows (the results, not context boxes).
fn shown_texts(b: &mut Browser) -> Vec<String> {
    let v = b.eval(
        "[...document.querySelectorAll('#results > tbody > tr.record td.line')]\
         .map(td => td.textContent)",
    );
    serde_json::from_value(v).unwrap()
}

/// Open `/ui/<query>` and wait until the search is over.
fn search(b: &mut Browser, api: &str, query: &str) {
    let url = format!("http://{api}/ui/{query}");
    b.navigate(&url);
    b.wait_for(
        &format!(
            "location.href === {} && document.body && document.body.dataset.state === 'done'",
            serde_json::to_string(&url).unwrap()
        ),
        WAIT,
        &format!("the search {query} to finish"),
    );
}

fn rows(b: &mut Browser) -> u64 {
    b.eval("document.querySelectorAll('#results tbody tr').length")
        .as_u64()
        .unwrap()
}

/// Sum of the chart's bar counts.
fn chart_total(b: &mut Browser) -> u64 {
    b.eval(
        "[...document.querySelectorAll('#chart svg rect.bar')]\
         .reduce((n, r) => n + Number(r.dataset.count), 0)",
    )
    .as_u64()
    .unwrap()
}

/// A node serving the last hour of LogHub records (their texts, in order), and a browser.
fn ui_node() -> (tempfile::TempDir, Node, Vec<String>, Browser) {
    let dir = tempfile::tempdir().unwrap();
    write_last_hour(&dir.path().join("data/store"));
    let node = Node::ingeststore(dir.path(), &[]);
    let records = wait_for_records(node.addr("api"), 4000);
    let texts: Vec<String> = records.iter().map(|r| text(r)).collect();
    (dir, node, texts, Browser::launch())
}

#[test]
fn ui_searches_pages_charts_and_shows_context_in_a_browser() {
    let _serial = serial();
    let (_dir, node, texts, mut b) = ui_node();
    let api = node.addr("api").to_string();

    // A literal search given in the URL: the matching records, newest first, matches marked.
    let want: Vec<&String> = texts.iter().filter(|t| t.contains("error")).collect();
    assert!(want.len() > 100, "the sample has errors to find");
    search(&mut b, &api, "?q=error");
    assert_eq!(rows(&mut b), want.len().min(PAGE) as u64);
    let shown = shown_texts(&mut b);
    let newest: Vec<&String> = want.iter().rev().take(PAGE).copied().collect();
    assert_eq!(shown.iter().collect::<Vec<_>>(), newest);
    assert_eq!(
        b.eval(
            "[...document.querySelectorAll('#results tbody tr')]\
             .every(tr => [...tr.querySelectorAll('mark')].length > 0 && \
                          [...tr.querySelectorAll('mark')].every(m => m.textContent === 'error'))"
        ),
        true,
        "every row has its matches wrapped in <mark>"
    );
    let time = b.eval("document.querySelector('#results td.time').textContent");
    assert!(
        time.as_str()
            .is_some_and(|t| t.len() == 23 && t.as_bytes()[4] == b'-'),
        "record time shown: {time}"
    );
    // The chart: inline SVG, bars adding up to the same count.
    assert_eq!(b.eval("!document.getElementById('chart').hidden"), true);
    assert_eq!(chart_total(&mut b), want.len() as u64);
    assert_eq!(b.eval("document.getElementById('q').value"), "error");
    assert_eq!(b.eval("document.getElementById('error').hidden"), true);
    // The planning stats as you type.
    b.wait_for(
        "document.getElementById('plan').textContent.includes('on 1 node')",
        WAIT,
        "the planning stats",
    );
    if let Ok(path) = std::env::var("OKLOG_UI_SCREENSHOT") {
        std::fs::write(&path, b.screenshot()).unwrap();
    }

    // Ignoring case is a (?i) regex; the state stays in the URL.
    let want_i = texts
        .iter()
        .filter(|t| t.to_lowercase().contains("notice"))
        .count() as u64;
    search(&mut b, &api, "?q=NOTICE&i=1");
    assert_eq!(rows(&mut b), want_i.min(PAGE as u64));
    assert_eq!(chart_total(&mut b), want_i);
    assert_eq!(b.eval("document.getElementById('icase').checked"), true);
    assert_eq!(
        b.eval("document.querySelector('mark').textContent"),
        "notice"
    );

    // A regex with grep line semantics (`$` ends the payload).
    let re = regex::Regex::new(r"state [67]$").unwrap();
    let want_re = texts.iter().filter(|t| re.is_match(t)).count() as u64;
    assert!(want_re > 0);
    search(&mut b, &api, "?q=state%20%5B67%5D%24&regex=1");
    assert_eq!(rows(&mut b), want_re.min(PAGE as u64));
    assert_eq!(b.eval("document.getElementById('regex').checked"), true);

    // Clicking a bar zooms into its bucket: absolute from/to in the URL, that bar's records.
    search(&mut b, &api, "?q=error&from=15m");
    let bar = b.eval("Number(document.querySelector('#chart svg rect.bar').dataset.count)");
    b.eval(
        "document.querySelector('#chart svg rect.bar').dispatchEvent(new MouseEvent('click')); \
         document.body.dataset.state = 'clicked'",
    );
    b.wait_for(
        "location.search.includes('to=') && document.body.dataset.state === 'done'",
        WAIT,
        "the zoomed search",
    );
    assert_eq!(rows(&mut b) as f64, bar.as_f64().unwrap().min(PAGE as f64));
    assert_eq!(b.eval("document.getElementById('range').value"), "custom");

    // Oldest first stays an option, in the URL.
    search(&mut b, &api, "?q=error&order=asc");
    let oldest: Vec<&String> = want.iter().take(5000).copied().collect();
    assert_eq!(shown_texts(&mut b).iter().collect::<Vec<_>>(), oldest);
    assert_eq!(b.eval("document.getElementById('order').value"), "asc");

    // The chart is stacked by topic: each topic's bars add up to its count, with a legend.
    search(&mut b, &api, "?from=2h");
    let by_topic = b.eval(
        "[...document.querySelectorAll('#chart svg rect.seg')].reduce((m, r) => \
         (m[r.dataset.topic] = (m[r.dataset.topic] || 0) + Number(r.dataset.count), m), {})",
    );
    let count = |t: &str| {
        texts
            .iter()
            .filter(|x| x.starts_with(&format!("{t} ")))
            .count()
    };
    assert_eq!(by_topic["apache"], count("apache"));
    assert_eq!(by_topic["openssh"], count("openssh"));
    assert_eq!(chart_total(&mut b), texts.len() as u64);
    let legend = b.eval("document.getElementById('legend').textContent");
    assert!(
        legend.as_str().unwrap().contains("apache (2,000)")
            && legend.as_str().unwrap().contains("openssh (2,000)"),
        "{legend}"
    );

    // Newest first, a page at a time: "Older" shows the next page, right after the last one.
    assert_eq!(rows(&mut b), PAGE as u64);
    let all_newest: Vec<&String> = texts.iter().rev().collect();
    assert_eq!(
        shown_texts(&mut b).iter().collect::<Vec<_>>(),
        all_newest[..PAGE].to_vec()
    );
    for pages in 2..=3 {
        b.eval("document.getElementById('older').click()");
        b.wait_for(
            &format!(
                "document.querySelectorAll('#results > tbody > tr.record').length === {} \
                 && document.body.dataset.state === 'done'",
                PAGE * pages
            ),
            WAIT,
            "the next page",
        );
        assert_eq!(
            shown_texts(&mut b).iter().collect::<Vec<_>>(),
            all_newest[..PAGE * pages].to_vec()
        );
    }

    // The topic picker lists the window's topics with their counts; choosing one searches it.
    b.wait_for(
        "document.getElementById('topic').dataset.loaded === '1'",
        WAIT,
        "the topic picker",
    );
    let options = b.eval("[...document.getElementById('topic').options].map(o => o.textContent)");
    let options: Vec<String> = serde_json::from_value(options).unwrap();
    assert!(
        options.contains(&"apache (2,000)".to_string())
            && options.contains(&"openssh (2,000)".to_string()),
        "{options:?}"
    );
    b.eval(
        "document.getElementById('topic').value = 'openssh'; \
         document.getElementById('q').value = 'Failed'; \
         document.body.dataset.state = 'picked'; \
         document.getElementById('go').click()",
    );
    b.wait_for(
        "location.search.includes('topic=openssh') && document.body.dataset.state === 'done'",
        WAIT,
        "the topic's search",
    );
    let want_t: Vec<&String> = texts
        .iter()
        .filter(|t| t.starts_with("openssh ") && t.contains("Failed"))
        .rev()
        .take(PAGE)
        .collect();
    assert!(!want_t.is_empty());
    assert_eq!(shown_texts(&mut b).iter().collect::<Vec<_>>(), want_t);

    // A record's context on click: the records of its topic just before and after it.
    b.eval("document.querySelectorAll('#results > tbody > tr.record')[3].click()");
    b.wait_for(
        "document.querySelector('tr.context-box')?.dataset.state === 'done'",
        WAIT,
        "the context of the clicked record",
    );
    let topic_texts: Vec<&String> = texts.iter().filter(|t| t.starts_with("openssh ")).collect();
    let at = topic_texts.iter().position(|t| *t == want_t[3]).unwrap();
    let around: Vec<&String> =
        topic_texts[at.saturating_sub(5)..(at + 6).min(topic_texts.len())].to_vec();
    let ctx = b
        .eval("[...document.querySelectorAll('tr.context-box td.line')].map(td => td.textContent)");
    let ctx: Vec<String> = serde_json::from_value(ctx).unwrap();
    assert_eq!(ctx.iter().collect::<Vec<_>>(), around);
    assert_eq!(
        b.eval("document.querySelector('tr.context-box tr.self td.line').textContent"),
        want_t[3].as_str()
    );
    // A second click hides it again.
    b.eval("document.querySelectorAll('#results > tbody > tr.record')[3].click()");
    assert_eq!(
        b.eval("document.querySelectorAll('tr.context-box').length"),
        0
    );

    // A bad regex: the node's 400 message, verbatim, and nothing else.
    search(&mut b, &api, "?q=err(&regex=1");
    assert_eq!(b.eval("document.getElementById('error').hidden"), false);
    let msg = b.eval("document.getElementById('error').textContent");
    assert!(
        msg.as_str().unwrap().contains("unclosed group"),
        "error shown: {msg}"
    );
    assert_eq!(rows(&mut b), 0);
    assert_eq!(b.eval("document.getElementById('chart').hidden"), true);

    let errors = b.js_errors();
    assert!(errors.is_empty(), "JavaScript errors: {errors:#?}");
}

#[test]
fn ui_tails_live_and_warns_of_a_partial_answer_in_a_browser() {
    let _serial = serial();
    let (dir, node, texts, mut b) = ui_node();
    let api = node.addr("api").to_string();
    let want: Vec<&String> = texts.iter().filter(|t| t.contains("error")).collect();
    // Live tail: new matching records appear; while paused they wait, then show on resume.
    let url = format!("http://{api}/ui/?q=tailmark&tail=1");
    b.navigate(&url);
    b.wait_for(
        "document.body.dataset.state === 'tailing'",
        WAIT,
        "the tail to start",
    );
    wait_for_streams(&api, 1);
    let mut lines = String::new();
    for i in 0..20 {
        lines.push_str(&format!("tailmark {i}\nsomething else {i}\n"));
    }
    forward(node.addr("fast"), lines.as_bytes(), &[]);
    b.wait_for(
        "document.querySelectorAll('#results tbody tr').length === 20",
        WAIT,
        "20 tailed records",
    );
    assert_eq!(
        b.eval("document.querySelector('#results tbody tr mark').textContent"),
        "tailmark"
    );
    b.eval("document.getElementById('pause').click()");
    forward(
        node.addr("fast"),
        b"tailmark late 1\ntailmark late 2\n",
        &[],
    );
    b.wait_for(
        "document.getElementById('status').textContent.includes('2 waiting')",
        WAIT,
        "records waiting while paused",
    );
    assert_eq!(rows(&mut b), 20);
    b.eval("document.getElementById('pause').click()");
    assert_eq!(rows(&mut b), 22);

    // A store node that does not answer: the records of the others, and a warning.
    let mut hung = start_role(
        "store",
        &dir.path().join("hung"),
        Some(node.addr("cluster")),
        &[],
    );
    eventually(Duration::from_secs(10), "the second store to join", || {
        let r = http("GET", &api, "/store/_clusterstate", b"");
        serde_json::from_slice::<serde_json::Value>(&r.body)
            .ok()
            .filter(|v| v["n"] == 2)
    });
    let pid = hung.child.id().to_string();
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    assert!(kill("-STOP").success());
    search(&mut b, &api, "?q=error&from=2h");
    let _ = kill("-CONT");
    let _ = hung.child.kill();
    assert_eq!(
        rows(&mut b),
        want.len().min(PAGE) as u64,
        "the others' records"
    );
    assert_eq!(b.eval("document.getElementById('warning').hidden"), false);
    let warning = b.eval("document.getElementById('warning').textContent");
    assert!(
        warning
            .as_str()
            .unwrap()
            .contains("Partial result: 1 store node"),
        "{warning}"
    );

    let errors = b.js_errors();
    assert!(errors.is_empty(), "JavaScript errors: {errors:#?}");
}

#[test]
fn ui_asks_for_a_token_when_the_node_wants_one() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    write_last_hour(&dir.path().join("data/store"));
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "node-token-0000000000000001 cluster\nquery-token-000000000000001 query\n",
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let node = Node::start_env(
        dir.path(),
        &ingeststore_args(&["-auth.token-file", tokens.to_str().unwrap()]),
        &["api"],
        &[("OKLOG_AUTH_TOKEN", "node-token-0000000000000001")],
    );
    let api = node.addr("api").to_string();
    let mut b = Browser::launch();
    b.navigate(&format!("http://{api}/ui/?q=error"));
    b.wait_for(
        "document.body && !document.getElementById('login').hidden",
        WAIT,
        "the page to ask for a token",
    );
    assert_eq!(rows(&mut b), 0, "nothing shown without a token");
    // A wrong token is refused, and the page says so.
    let submit = |b: &mut Browser, token: &str| {
        b.eval(&format!(
            "document.getElementById('token').value = {}; \
             document.getElementById('login').requestSubmit(); true",
            serde_json::to_string(token).unwrap()
        ));
    };
    submit(&mut b, "not-the-right-token-000001");
    b.wait_for(
        "!document.getElementById('login').hidden && \
         document.getElementById('login-why').textContent.includes('refused')",
        WAIT,
        "a refused token to be reported",
    );
    submit(&mut b, "query-token-000000000000001");
    b.wait_for(
        "document.body.dataset.state === 'done' && \
         document.querySelectorAll('#results tbody tr').length > 0",
        WAIT,
        "the search to run with the token",
    );
    assert_eq!(
        b.eval("sessionStorage.getItem('oklog-token')"),
        "query-token-000000000000001",
        "kept for this tab's session"
    );
    assert!(b.eval("document.getElementById('login').hidden") == true);
    assert!(
        chart_total(&mut b) > 0,
        "the chart's hits came with the token too"
    );
    let errors = b.js_errors();
    assert!(errors.is_empty(), "{errors:?}");
}
