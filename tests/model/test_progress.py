"""Training progress lines (#25): what a user tails in stdout or the run's log.txt while a run trains."""

import re

import pytest

from gemkr_lab.config import DataConfig, ModelConfig, TrainConfig
from gemkr_lab.kb.tokenize import load_tokenizer
from gemkr_lab.model.progress import TrainingProgress
from gemkr_lab.model.train import fit

LINE = re.compile(
    r"^train step (\d+)/(\d+)  loss (\d+\.\d{4})  lr (\d\.\d\de[-+]\d\d)  (\d+\.\d) samples/s(  ETA .+)?$", re.M
)


@pytest.mark.slow
def test_a_tiny_training_prints_progress_lines_to_stdout_and_log(tiny_world, tmp_path, capsys):
    world, prepared = tiny_world
    train = TrainConfig(max_steps=4, batch_size=4, accumulate_grad_batches=2, warmup_steps=1)
    fit(
        prepared,
        world,
        load_tokenizer(f"{world}/tokenizer"),
        tmp_path,
        model_config=ModelConfig(vision_model="tiny-vit", use_lora=False),
        data_config=DataConfig(),
        train_config=train,
        limit_train=16,
        accelerator="cpu",
    )
    out = capsys.readouterr().out  # captured: not a terminal, so the lines go to stdout
    log = (tmp_path / "log.txt").read_text(encoding="utf-8")
    for text in (out, log):
        found = LINE.findall(text)
        assert [int(s) for s, *_ in found] == [1, 2, 3, 4], text  # max_steps 4: every step (log_every_n_steps 1)
        for step, total, loss, lr, rate, eta in found:
            assert total == "4" and float(loss) > 0 and float(lr) > 0 and float(rate) > 0
            assert eta or step == "4"  # the ETA of every step but the last
    assert LINE.findall(out) == LINE.findall(log)


def test_a_line_goes_once_where_stdout_is_the_log(tmp_path, monkeypatch):
    """A sweep's run-cell has its stdout in log.txt: the line is written there once, not twice."""
    log = tmp_path / "log.txt"
    progress = TrainingProgress(log)
    with open(log, "a", encoding="utf-8") as stdout:
        monkeypatch.setattr("sys.stdout", stdout)
        progress.write("train step 1/2  loss 1.0000")
    assert log.read_text(encoding="utf-8") == "train step 1/2  loss 1.0000\n"


def test_the_log_alone_on_a_terminal(tmp_path, monkeypatch, capsys):
    """On a terminal Lightning's bar shows the progress: stdout gets no lines, the run's log still does."""
    log = tmp_path / "log.txt"
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    TrainingProgress(log).write("train step 1/2")
    assert capsys.readouterr().out == ""
    assert log.read_text(encoding="utf-8") == "train step 1/2\n"
