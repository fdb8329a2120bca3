"""The legibility benchmark's bookkeeping: held-out classes, old records still matching, and the sampled function
being the library's (benchmarks/legibility.py is a script; these are its parts that decide what a number means)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import legibility as L  # noqa: E402

from gencnn_plugin import create_model  # noqa: E402
from gencnn_plugin.hmc import HMCConfig  # noqa: E402
from gencnn_plugin.nodes import node_score  # noqa: E402
from gencnn_plugin.visualize import score_view  # noqa: E402


def test_heldout_classes_are_a_fixed_draw_outside_the_tuning_classes():
    held = L.heldout_classes()
    assert held == L.HELDOUT_CLASSES == [8, 34, 125, 151, 194, 250, 258, 322, 331, 352, 367, 462, 540, 634, 835, 852,
                                         895, 962, 964, 991]  # the recorded draw (hen ... coral fungus)
    assert len(held) == len(set(held)) == 20 and all(0 <= c < 1000 for c in held)
    assert not set(held) & set(L.IMAGENET_CLASSES)
    assert L.heldout_classes(seed=15) != held
    second = L.HELDOUT2_CLASSES
    assert second == [19, 33, 49, 179, 229, 232, 273, 451, 485, 590, 683, 740, 815, 818, 846, 870, 885, 923, 924,
                      975]  # the recorded second draw (chickadee ... lakeside)
    assert len(set(second)) == 20 and not set(second) & (set(held) | set(L.IMAGENET_CLASSES))
    third = L.HELDOUT3_CLASSES
    assert third == [71, 85, 129, 136, 156, 161, 270, 360, 369, 393, 411, 514, 587, 594, 597, 713, 803, 881, 900,
                     996]  # the recorded third draw (scorpion ... hen-of-the-woods)
    assert len(set(third)) == 20 and not set(third) & (set(second) | set(held) | set(L.IMAGENET_CLASSES))
    assert list(L.CLASS_SETS) == list(L.CLASS_SET_WORDS) == ["tuning", "heldout", "heldout2", "heldout3"]


def test_a_record_written_before_the_jitter_field_changed_still_matches():
    """Records stored jitter as its list of shifts and had no warm_augment field: they are the same setting."""
    st = L.IMAGENET_SETTINGS["pink_s03_t001"]
    old = {k: v for k, v in asdict(st).items() if k != "warm_augment"}
    old["jitter"] = [[0, 0], [0, 8], [8, 0], [8, 8]]
    assert L.setting_dict(old) == asdict(st)
    for other in ([[0, 0], [0, 4], [4, 0], [4, 4]], [[0, 0], [0, 8]], [[0, 0], [8, 8], [0, 8], [8, 0]]):
        old["jitter"] = other
        assert L.setting_dict(old) != asdict(st)
    old["jitter"] = []
    assert L.setting_dict(old)["jitter"] == 0
    aug = asdict(L.IMAGENET_SETTINGS["pink_s03_aug600_t001"])  # warm_augment was on/off: on is the standard range
    assert L.setting_dict({**aug, "warm_augment": True}) == aug
    assert L.setting_dict({**aug, "warm_augment": False}) != aug
    wide = {**asdict(L.IMAGENET_SETTINGS["pink_s03_wide600_t001"]), "name": aug["name"]}  # differs by the range only
    assert {**L.setting_dict({**aug, "warm_augment": True}), "warm_augment": "wide"} == wide
    assert L.setting_dict({**aug, "warm_augment": True}) != wide
    assert L.record_key("x", "heldout") == "x_heldout" and L.record_key("x", "tuning") == L.record_key("x", None) == "x"
    assert L.record_key("x", "heldout2") == "x_heldout2"


RECORDS = sorted(p for p in (Path(__file__).resolve().parent.parent / "docs" / "results" / "legibility").glob("*.json")
                 if not p.stem.startswith("real_agreement_"))  # not a setting's record: test_real_agreement_*


@pytest.mark.parametrize("path", RECORDS, ids=[p.stem for p in RECORDS])
def test_every_committed_record_is_a_setting_of_todays_code(path):
    """What the report says a record ran (its label, its class set) is what today's Setting of that name runs, up to
    the run's own chains and iterations."""
    rec = json.loads(path.read_text())
    stored = L.setting_dict(rec["setting"])
    names = {f.name for f in fields(L.Setting)}
    assert set(stored) <= names
    table = L.DIGIT_SETTINGS if rec["benchmark"] == "digits" else L.IMAGENET_SETTINGS
    today = asdict(table[stored["name"]])
    for k in ("chains", "iters"):  # set by --chains, --paper-iters
        today.pop(k), stored.pop(k)
    assert stored == today
    if rec["benchmark"] == "imagenet":
        assert {int(c) for c in rec["classes"]} <= set(L.CLASS_SETS[rec.get("class_set", "tuning")])
        assert path.stem == f"imagenet_{rec['model']}_{L.record_key(stored['name'], rec.get('class_set'))}"


def test_the_benchmark_samples_the_librarys_view_of_the_node():
    """The 4-shift average of the clipped pixels, built here by hand: the benchmark's score is that function."""
    from gencnn_plugin.reference import PixelClippedScore, TransformAveragedScore

    torch.manual_seed(0)
    model, info = create_model("lenet")
    st = L.Setting("s", jitter=2, clip=True)
    x = torch.randn(3, 1, 28, 28) * 3
    base = node_score(model, info, ["logits:3"])
    want = PixelClippedScore(TransformAveragedScore(base, [(0, 0), (0, 2), (2, 0), (2, 2)]), info)(x)
    got = L.build_score(model, info, ["logits:3"], st)(x)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, PixelClippedScore(base, info)(x))  # the jitter is not ignored
    torch.testing.assert_close(got, score_view(base, info, HMCConfig(jitter=2, clip=True))(x))
    assert L.Setting("s", jitter=2).label().endswith("jitter 2 px; last")


def test_paired_difference_pairs_by_class_for_both_benchmarks():
    digits_a = {"benchmark": "digits", "judge_per_class": [1.0] * 10}
    digits_b = {"benchmark": "digits", "judge_per_class": [1.0] * 9 + [0.5]}
    d = L.paired_difference(digits_a, digits_b)
    assert d["classes"] == 10 and abs(d["diff"] - 0.05) < 1e-12 and d["ci"][0] == 0.0 and d["ci"][1] > 0.05
    assert L.paired_difference(digits_b, digits_b)["ci"] == [0.0, 0.0]
    imagenet = {"classes": {str(c): {"ranks": [0, 7]} for c in range(6)}}
    assert L.class_rates(imagenet) == {str(c): 0.5 for c in range(6)}
    assert L.paired_difference(imagenet, {"classes": {"0": {"ranks": [0]}}}) is None  # under 5 classes in common


@pytest.mark.parametrize("preset, table, name", [
    ("imagenet_legible", "imagenet", L.IMAGENET_PRESET_SETTING),
    ("mnist_legible", "mnist", L.DIGIT_PRESET_SETTING["mnist"]),
    ("fashion_mnist_legible", "fashion-mnist", L.DIGIT_PRESET_SETTING["fashion-mnist"]),
])
def test_each_legible_preset_is_the_benchmark_setting_it_is_measured_as(preset, table, name):
    """The docs quote a preset's legibility from the benchmark setting of this name: the two must sample the same
    thing (up to the number of chains, which the benchmark sets per run)."""
    from gencnn_plugin.reference import DEFAULT_DATA
    from gencnn_plugin.visualize import load_preset

    st = (L.IMAGENET_SETTINGS if table == "imagenet" else L.DIGIT_SETTINGS)[name]
    cfg = load_preset(preset)
    assert st.method == "hmc" and st.display == "last" and st.warm_lr == 0.05  # visualize.warm_start's Adam rate
    if table == "imagenet":  # an ImageNet setting names its data file, as the preset must
        assert cfg.reference == st.reference
    else:  # a digit setting names the kind and the benchmark adds its dataset's data file; a bare kind means mnist's
        kind, _, data = cfg.reference.partition(":")
        assert (kind, data or DEFAULT_DATA[1]) == (st.reference, L.DATASET_FILES[table])
    mine = {k: getattr(cfg, k) for k in ("sigma", "temperature", "step_size", "leapfrog_steps", "mass", "iters",
                                         "adapt_steps", "target_accept", "clip", "jitter", "affine_views",
                                         "warm_augment", "replicas", "hot_temperature")}
    theirs = {k: getattr(st, k) for k in mine}
    assert (mine, cfg.warm_start) == (theirs, st.warm_opt)


def test_real_agreement_counts_the_judge_against_the_sampled_networks_labels(tmp_path, data_dir):
    """The ceiling the report prints: a judge that is the sampled network itself agrees on every image; a judge that
    always names one class c agrees exactly on the images the sampled network calls c, and per class on c only."""
    import copy

    from gencnn_plugin.checkpoint import save_checkpoint
    from gencnn_plugin.data import load_idx

    torch.manual_seed(0)
    lenet, info = create_model("lenet")
    lenet.eval()
    test = load_idx("mnist", str(data_dir), train=False)
    with torch.no_grad():
        own = torch.cat([lenet(L.from_pixels(test.images[i:i + 1000].float() / 255, info)).argmax(1)
                         for i in range(0, 10000, 1000)])
    c = int(own.mode().values)
    const = copy.deepcopy(lenet)
    with torch.no_grad():
        [m for m in const.modules() if isinstance(m, torch.nn.Linear)][-1].bias[c] += 1e4  # every input is a c
    for m, name in ((lenet, "a"), (const, "const")):
        (tmp_path / name).mkdir()
        save_checkpoint(tmp_path / name / "checkpoint.safetensors", m, info, dataset="mnist", mode="dg")
    recs = {}
    for judge in ("a", "const"):
        out = tmp_path / f"{judge}.json"
        L.main(["real-agreement", "--data-dir", str(data_dir), "--lenet", str(tmp_path / "a"), "--judge",
                str(tmp_path / judge), "--out", str(out)])
        recs[judge] = json.loads(out.read_text())
    same, one = recs["a"], recs["const"]
    assert same["images"] == same["agreement"]["n"] == 10000 and same["agreement"]["k"] == 10000
    assert all(v == 1.0 for v in same["per_class"] if v is not None)  # None: a class the LeNet never names
    assert 0 < one["agreement"]["k"] == int((own == c).sum()) < 10000
    assert one["per_class"][c] == 1.0
    assert all(v == 0.0 for k, v in enumerate(one["per_class"]) if k != c and v is not None)
    assert [v is None for v in one["per_class"]] == [not (own == k).any() for k in range(10)]


def test_records_written_side_by_side_merge_their_classes_and_commands(tmp_path):
    """Two ``--classes`` splits of one setting end in one record holding both classes, both commands and the summary
    over both; a record of another setting replaces the file instead of merging into it."""
    st = asdict(L.IMAGENET_SETTINGS["pink_s03_wide600_t001"])

    def run(rank: int) -> dict:
        return {"ranks": [rank, rank], "own_ranks": [0, 0], "seconds": 1.0, "cpu_seconds": 1.0}

    path = tmp_path / "r.json"
    L.save_record(path, {"setting": st, "classes": {"22": run(0)}, "command": "a"})
    L.save_record(path, {"setting": st, "classes": {"1": run(9)}, "command": "b"}, summarize=True)
    rec = json.loads(path.read_text())
    assert list(rec["classes"]) == ["1", "22"] and rec["commands"] == ["a", "b"]
    assert (rec["summary"]["top5"]["k"], rec["summary"]["top5"]["n"]) == (2, 4)
    other = {**st, "temperature": 0.02}
    L.save_record(path, {"setting": other, "classes": {"7": run(0)}, "command": "c"})
    rec = json.loads(path.read_text())
    assert list(rec["classes"]) == ["7"] and "commands" not in rec
    assert not path.with_suffix(".tmp").exists()


def test_pooled_lines_pool_every_class_set_of_a_setting_and_the_held_out_sets_alone():
    st = asdict(L.IMAGENET_SETTINGS["pink1f_s03_wide600_t001"])
    other = asdict(L.IMAGENET_SETTINGS["paper"])

    def rec(class_set: str, hits: int, setting: dict = st) -> dict:  # 2 classes of the set, 2 chains each
        cs = L.CLASS_SETS[class_set][:2]
        ranks = [0] * hits + [9] * (4 - hits)
        return {"model": "m", "setting": setting, "class_set": class_set,
                "classes": {str(c): {"ranks": ranks[2 * i:2 * i + 2]} for i, c in enumerate(cs)}}

    rows = [rec("tuning", 4), rec("heldout", 2), rec("heldout2", 0),
            rec("heldout", 4, other), rec("heldout2", 2, other)]
    lines = [x for x in L.pooled_lines(rows) if x]
    assert len(lines) == 3  # paper: its held-out sets are all it ran, so one line; the preset: all, and held-out alone
    assert "`paper` over the held-out and second held-out classes together (4 classes): top-5 75.0%" in lines[0]
    assert "tuning, held-out and second held-out classes together (6 classes): top-5 50.0%" in lines[1]
    assert "`pink1f_s03_wide600_t001` over the held-out and second held-out classes together (4 classes): top-5 25.0%" \
        in lines[2]
    two = [x for x in L.pooled_lines(rows[:2]) if x]  # one held-out set: no held-out-only line
    assert len(two) == 1 and "tuning and held-out classes together (4 classes): top-5 75.0%" in two[0]
    assert not L.pooled_lines(rows[3:4])  # one class set: nothing to pool


def test_pooled_paired_lines_pair_the_preset_over_every_class_set_both_ran():
    preset = asdict(L.IMAGENET_SETTINGS[L.IMAGENET_PRESET_SETTING])
    paper, lucent = asdict(L.IMAGENET_SETTINGS["paper"]), asdict(L.IMAGENET_SETTINGS["lucent"])

    def rec(class_set: str, ranks: list[int], setting: dict) -> dict:  # 5 classes of the set, 1 chain each
        return {"model": "m", "setting": setting, "class_set": class_set,
                "classes": {str(c): {"ranks": [r]} for c, r in zip(L.CLASS_SETS[class_set][:5], ranks)}}

    rows = [rec("tuning", [0, 0, 9, 9, 9], preset), rec("heldout", [0] * 5, preset),
            rec("tuning", [9] * 5, paper), rec("heldout", [0, 9, 0, 9, 9], paper), rec("heldout", [9] * 5, lucent)]
    lines = L.pooled_paired_lines(rows)
    row = next(x for x in lines if x.startswith("| `paper`"))
    assert "| 10 | +50.0 (" in row  # (2 - 0 + 5 - 2) / 10 classes
    assert not any(x.startswith("| `lucent`") for x in lines)  # 5 classes in common, all of one set
    assert not any(x.startswith("| its own warm starts") for x in lines)  # no warm starts recorded
    for r in rows[:2]:
        for v in r["classes"].values():
            v["warm_ranks"] = [9]
    warm = next(x for x in L.pooled_paired_lines(rows) if x.startswith("| its own warm starts"))
    assert "| 10 | +70.0 (" in warm  # 7 of 10 classes read after HMC, none before
    for v in rows[0]["classes"].values():
        del v["warm_ranks"]
    lines = L.pooled_paired_lines(rows)  # warm starts on one class set only: the per-set figures say it
    assert any(x.startswith("| `paper`") for x in lines) and not any(x.startswith("| its own warm") for x in lines)
    assert not L.pooled_paired_lines(rows[:1] + rows[2:3])  # one class set in common: the per-set table says it


def test_note_links_are_rebased_for_the_report_one_folder_up():
    note = ("see [pilots/a.json](pilots/a.json), [grid](../../images/g.png), [web](https://x.org/a), "
            "[top](#thirteenth-session) and [abs](/etc/x)")
    assert L.rebase_links(note, "legibility") == (
        "see [pilots/a.json](legibility/pilots/a.json), [grid](../images/g.png), [web](https://x.org/a), "
        "[top](#thirteenth-session) and [abs](/etc/x)")


def test_every_relative_link_of_the_committed_reports_resolves():
    for md in (L.RESULTS.parent / "legibility.md", L.RESULTS / "NOTE.md"):
        local = [t for t in L.MD_LINK.findall(md.read_text()) if not L.NOT_RELATIVE.match(t)]
        assert local, md
        missing = [t for t in local if not (md.parent / t.split("#")[0]).exists()]
        assert not missing, (md.name, missing)


def test_long_chains_windows_read_the_draws_a_run_of_that_length_would_keep():
    """benchmarks/long_chains.py: R-hat at iteration k uses the draws after adaptation up to k, and the second half of
    those; chains that drift apart early and then sample one distribution pass only on the second half."""
    import long_chains as LC

    g = torch.Generator().manual_seed(0)
    iters, chains, adapt = 400, 2, 20
    drift = torch.zeros(iters, chains)
    drift[:200, 1] = torch.linspace(20.0, 0.0, 200)  # chain 1 starts far off and reaches chain 0's level at 200
    scores = drift + torch.randn(iters, chains, generator=g)
    proj = torch.randn(iters, chains, 3, generator=g)
    w = LC.windows(scores, proj, chains, adapt, 400)
    assert w["after_adapt"]["draws"] == 380 and w["second_half"]["draws"] == 190
    assert w["after_adapt"]["rhat_max"] > 1.05 >= w["second_half"]["rhat_max"]
    early = LC.windows(scores, proj, chains, adapt, 100)  # stopped at 100: only what it had run so far
    assert early["after_adapt"]["draws"] == 80 and early["second_half"]["draws"] == 40
    assert early["second_half"]["rhat_max"] > 1.05
