import json
import shutil

import matplotlib.image
import pytest

from turnrl.metrics import episode_intervals, episode_metrics
from turnrl.report import build_report, compare
from turnrl.results import EvalResult, ResultsError, episode_record, load_eval
from turnrl.types import Episode, Message, Turn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def ep(seed, answers, correct_at=None, text=None):
    turns = []
    for i, a in enumerate(answers, 1):
        last = i == correct_at or i == len(answers)
        turns.append(Turn([1, 2], [3, 4, 5], [0.0] * 3, text=text or f"The answer is {a}", reward=1.0 if i == correct_at else 0.0,
                          void=a is None, info={"answer": a, "valid": a is not None, "correct": i == correct_at, "reference": "9"},
                          feedback=[] if last else [Message("user", "Incorrect. Please think again.")], latency_s=0.25))
    msgs = [Message("user", f"question {seed}")]
    for t in turns:
        msgs += [Message("assistant", t.text), *t.feedback]
    return Episode(turns, group_id=seed, seed=seed, task_id=f"t{seed}", messages=msgs, terminated=correct_at is not None)


EPISODES = [ep(0, ["9"], 1), ep(1, ["3", "9"], 2), ep(2, ["4", "4", "4"]), ep(3, [None, "5", "6"], text="</script><b>bold?</b>"),
            ep(4, ["1", "1", "9"], 3)]
# solved: seeds 0, 1, 4 -> 3 ; failed: 2, 3 -> 2 ; repeated an answer: 2, 4 -> 2 ; invalid format: 3 -> 1


def result(episodes=EPISODES, step=None, seeds=None, max_turns=3):
    m = episode_metrics(episodes, max_turns)
    m["episodes"] = float(len(episodes))
    meta = {"model": "hand-built", "env": "retry", "seeds": seeds or [e.seed for e in episodes], "max_turns": max_turns,
            "step": step, "pass_k": 0}
    return EvalResult(m, episode_intervals(episodes, max_turns), meta, [episode_record(e) for e in episodes])


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    result(EPISODES[:3], step=0).save(d / "evals" / "step_000000")
    result(EPISODES, step=3).save(d / "evals" / "step_000003")
    rows = [{"split": "eval", "step": 0, "succ@1": 1 / 3}]
    rows += [{"split": "train", "step": s, "reward": 0.1 * s, "succ@1": 0.2, "succ@3": 0.5, "loss": 0.01, "kl": 0.0} for s in (1, 2, 3)]
    rows += [{"split": "eval", "step": 3, "succ@1": 0.2}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_results_round_trip(tmp_path):
    r = result()
    back = load_eval(r.save(tmp_path / "res"))
    assert back.metrics == r.metrics and back.meta == r.meta and back.episodes == r.episodes
    assert back.intervals == {k: tuple(v) for k, v in r.intervals.items()}


def test_report_of_a_training_run(run_dir):
    page = build_report(run_dir)
    out = run_dir / "report"
    assert page == out / "report.html"
    for name in ("report.json", "report.md", "succ_at_k.png", "training.png"):
        assert (out / name).stat().st_size > 0, name
    assert matplotlib.image.imread(out / "succ_at_k.png").shape[:2] == (528, 840)  # 7 x 4.4 in at 120 dpi
    doc = json.loads((out / "report.json").read_text())
    assert [e["label"] for e in doc["evals"]] == ["step 0", "step 3"] and doc["training_rows"] == 5
    md = (out / "report.md").read_text()
    # step 3: Succ@1 = 1/5, Succ@3 = 3/5; step 0: Succ@1 = 1/3 (hand counts above)
    assert "| step 3 | 5 | 0.200 [" in md and "| step 0 | 3 | 0.333 [" in md
    assert "| Succ@3 | 0.667 [" in md and "| 0.600 [" in md


def test_html_report_opens_in_headless_chromium(run_dir, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's)")
    from playwright.sync_api import sync_playwright

    page_path = build_report(run_dir)
    assert "http://" not in page_path.read_text() and "https://" not in page_path.read_text()  # self-contained
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.as_uri())
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            count = page.locator("#count")
            assert count.get_attribute("data-total") == "5" and count.inner_text() == "5 of 5 episodes"
            assert page.locator("details.ep").count() == 5
            assert page.locator("img").count() == 2  # both plots, inlined
            for name, expected in (("solved", 3), ("failed", 2), ("repeated", 2), ("invalid", 1)):
                page.click(f"button[data-f={name}]")
                assert count.get_attribute("data-matching") == str(expected), name
            page.click("button[data-f=invalid]")
            # the episode whose replies hold '</script>' renders them as text, 3 tokens a turn
            first = page.locator("details.ep").first
            assert "</script><b>bold?</b>" in first.inner_text()
            assert first.locator(".tok").count() == 3
            page.select_option("#eval", "0")
            assert count.get_attribute("data-total") == "3"
        finally:
            browser.close()
    assert errors == []
    assert matplotlib.image.imread(shot).shape[1] == 1280


def test_compare_needs_the_same_seeds(tmp_path):
    md = compare([("a", result()), ("b", result())], tmp_path / "cmp")
    text = md.read_text()
    assert text.count("| a | 5 | 0.200 [") == 1 and text.count("| b | 5 | 0.200 [") == 1
    assert text.count("| 0.600 [") == 4  # Succ@3 = 3/5 for both, in the headline and the Succ@k table
    assert (tmp_path / "cmp" / "compare.png").is_file()
    with pytest.raises(ResultsError, match="b was evaluated on other seeds"):
        compare([("a", result()), ("b", result(seeds=[7, 8, 9, 10, 11]))], tmp_path / "cmp2")


def test_malformed_run_directories_name_what_is_missing(tmp_path, run_dir):
    with pytest.raises(ResultsError, match="no such directory"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match=r"no eval.json and no evals/step_\*/eval.json"):
        build_report(tmp_path / "empty")
    res = run_dir / "evals" / "step_000003"
    doc = json.loads((res / "eval.json").read_text())
    (res / "eval.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "meta"}))
    with pytest.raises(ResultsError, match="eval.json: missing field 'meta'"):
        build_report(run_dir)
    doc["meta"].pop("seeds")
    (res / "eval.json").write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match="missing field 'seeds'"):
        load_eval(res)
    (res / "eval.json").write_text("{not json")
    with pytest.raises(ResultsError, match="eval.json: not valid JSON"):
        load_eval(res)
    r = result()
    r.save(res)
    (res / "episodes.jsonl").write_text((res / "episodes.jsonl").read_text() + "{broken\n")
    with pytest.raises(ResultsError, match=r"episodes.jsonl:6: invalid JSON"):
        load_eval(res)
    (res / "episodes.jsonl").unlink()
    with pytest.raises(ResultsError, match=r"episodes.jsonl: not found \(named by"):
        load_eval(res)
    r.save(res)
    (run_dir / "metrics.jsonl").write_text('{"split": "train", "step": 1}\n{"step": 2}\n')
    with pytest.raises(ResultsError, match=r"metrics.jsonl:2: a metrics row has no 'split'"):
        build_report(run_dir)


def test_report_rows_of_the_collapse_diagnostic(tmp_path):
    from turnrl.diagnostics import collapse_metrics

    r = result()
    m, _, meta = collapse_metrics(EPISODES, None, 32)  # first answers 9, 3, 4, (text), 1: top share 1/5
    r.metrics.update(m, retrieval_accuracy=0.75, mi_proxy=1.25, reply_entropy=2.5)
    r.intervals.update(retrieval_accuracy=(0.5, 1.0))
    r.meta["collapse"] = meta
    r.save(tmp_path / "run" / "evals" / "step_000003")
    result(EPISODES[:3], step=0).save(tmp_path / "run" / "evals" / "step_000000")  # no diagnostic: dashes
    page = build_report(tmp_path / "run")
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    head = md.splitlines()[2]
    assert head.endswith("| retrieval acc. | MI proxy (nats) | reply entropy | top first answer |")
    assert "| 0.750 [0.500, 1.000] | 1.250 | 2.500 | 0.200 |" in md and "| – | – | – | – |" in md
    assert "<th>MI proxy (nats)</th>" in page.read_text()
