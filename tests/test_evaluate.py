"""The evaluation command's robustness table, through the runners and through a real server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.evaluate import api_translator, robustness_scores, robustness_table, runner_translator
from export.text_variants import VARIANTS
from service.model_card import ModelCard, RobustnessSpec, load_model_card
from service.runners import TranslationRunner, load_runner
from tests.conftest import COMMITTED_MODELS, DATA_DIR, Server

TRANSLATOR = COMMITTED_MODELS / "translate-en-de" / "1"
# two Multi30k val pairs, and a source over the 128-subword limit that the service refuses
PAIRS = [("A man in an orange hat starring at something.",
          "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."),
         ("A Boston Terrier is running on lush green grass in front of a white fence.",
          "Ein Boston Terrier läuft über saftig-grünes Gras vor einem weißen Zaun."),
         (" ".join(["zebra-striped xylophones"] * 40) + ".", "Zu lang.")]


@pytest.fixture(scope="module")
def runner() -> TranslationRunner:
    r = load_runner(TRANSLATOR, ["CPUExecutionProvider"])
    assert isinstance(r, TranslationRunner)
    return r


def test_robustness_scores_every_variant_and_counts_refusals(runner: TranslationRunner) -> None:
    scores = robustness_scores(runner_translator(runner), {"val": PAIRS}, beam=1)
    assert list(scores) == ["val"] and list(scores["val"]) == list(VARIANTS)
    for score in scores["val"].values():
        assert score.refused == 1  # the long source, in every variant; scored as an empty output
        assert 0.0 < score.bleu_lc <= 100.0 and 0.0 < score.bleu <= 100.0
    # the truecaser turns UPPER and Title back into the sentences as given
    assert scores["val"]["upper"].bleu_lc == pytest.approx(scores["val"]["given"].bleu_lc, abs=5.0)
    runner.source_tokenizer.truecaser, truecaser = None, runner.source_tokenizer.truecaser
    try:
        raw = robustness_scores(runner_translator(runner), {"val": PAIRS[:2]}, beam=1)
    finally:
        runner.source_tokenizer.truecaser = truecaser
    assert raw["val"]["upper"].bleu_lc < scores["val"]["upper"].bleu_lc


def test_the_table_is_stored_in_the_card_and_older_cards_still_load(runner: TranslationRunner) -> None:
    scores = robustness_scores(runner_translator(runner), {"val": PAIRS[:1]}, beam=1)
    spec = RobustnessSpec(beam_size=1, truecaser=True, measured="test", scores=scores)
    table = robustness_table(spec)
    assert table.splitlines()[0].startswith("| source typed as | val BLEU lc (cased)")
    assert len(table.splitlines()) == 2 + len(VARIANTS)
    card = load_model_card(TRANSLATOR / "model.json").model_copy(update={"robustness": spec})
    again = ModelCard.model_validate_json(card.model_dump_json())
    assert again.robustness == spec
    old = json.loads((TRANSLATOR / "model.json").read_text())
    old.pop("robustness", None)
    old["tokenizers"]["source"].pop("truecaser", None)
    assert ModelCard.model_validate(old).robustness is None


def test_through_the_api_the_same_translations_and_refusals(runner: TranslationRunner,
                                                             committed_server: Server) -> None:
    sources = [s for s, _ in PAIRS] + ["TWO DOGS PLAY IN THE SNOW."]
    over_http = api_translator(committed_server.url, batch_size=2)(sources, 3)
    assert over_http == runner_translator(runner)(sources, 3)
    assert over_http[2] is None and all(t for i, t in enumerate(over_http) if i != 2)


def test_golden_outputs_are_recorded_only_for_this_repositorys_own_models(tiny_repo: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`--write` on one's own model, run from the repository's root as the README runs it, wrote
    its outputs over the committed models' golden files (named after the card's name)."""
    from export.evaluate import REPOSITORY, golden_dir_of, main

    assert golden_dir_of(REPOSITORY / "models" / "sentiment" / "1") == REPOSITORY / "tests" / "golden"
    own = tmp_path / "models" / "my-sentiment" / "1"  # its card still says "sentiment", as older exports wrote
    shutil.copytree(tiny_repo / "sentiment" / "1", own)
    assert golden_dir_of(own) is None
    golden = REPOSITORY / "tests" / "golden" / "sentiment.json"
    before = golden.read_bytes()
    main(["sentiment", "--model-dir", str(own), "--data-dir", str(DATA_DIR), "--write"])
    assert golden.read_bytes() == before
    assert "give --golden-dir to record them for this one" in capsys.readouterr().out
    assert "sst2_test_accuracy" in load_model_card(own / "model.json").metrics
    main(["sentiment", "--model-dir", str(own), "--data-dir", str(DATA_DIR), "--write", "--golden-dir",
          str(tmp_path / "golden")])
    assert (tmp_path / "golden" / "my-sentiment.json").is_file()  # named after its folder, not the card


@pytest.mark.parametrize(("args", "said"), [
    (["sentiment", "--model-dir", "/nonexistent/sentiment/1"], "error: /nonexistent/sentiment/1/model.json: model "
                                                              "card not found"),
    (["translation", "--model-dir", str(COMMITTED_MODELS / "sentiment" / "1")], "holds sentiment, a "
                                                                              "text-classification model, not a "
                                                                              "translation model"),
    (["sentiment", "--model-dir", str(COMMITTED_MODELS / "sentiment" / "1"), "--data-dir", "/nonexistent"],
     "error: /nonexistent/sst2/stsa.binary.dev not found: pass --data-dir"),
])
def test_a_wrong_path_or_model_is_one_line(args: list[str], said: str) -> None:
    """A --model-dir without a card, a card of the other task (it was measured as the card said,
    whatever the command asked) or a --data-dir without the data: exit status 2 and one line
    saying what to pass, not a traceback."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "export.evaluate", *args, "--dev-only"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr
