"""Your own board: a user-defined SoC in `<models-dir>/socs.json` (`leti socs add`), listed by
`leti socs` and `/socs`, calibrated and predicted like a bundled unmeasured SoC; bad input gets a
clear error and leaves the models dir as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from leti.cli import main as cli_main
from leti.core import socs
from leti.core.errors import LetiError, SocRegistryError, UnknownSocError
from leti.predict.estimator import Estimator, uncalibrated_base
from leti.predict.registry import available
from leti.train import calibrate as calibration
from tests.helpers import light, write_timings_csv

REPO = Path(__file__).resolve().parent.parent
GRAPHS = ("squeezenet", "shufflenet", "bvlc_alexnet", "inception_v1", "resnet50")
BOARD = [
    "--id", "myboard", "--name", "My Board", "--gpu", "Mali-G57 MC2", "--family", "mali",
    "--fp16-gflops", "240", "--fp32-gflops", "120", "--dram-gbps", "17",
]  # fmt: skip


@pytest.fixture()
def models(tmp_path) -> Path:
    """A models dir holding a copy of the bundled transfer model only."""
    root = tmp_path / "models"
    shutil.copytree(REPO / "models" / "transfer", root / "transfer")
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def add_board(models: Path) -> None:
    assert cli_main(["socs", "add", *BOARD, "--models-dir", str(models)]) == 0


def timings_csv(path: Path, models: Path, graphs: list[Path], scale: float) -> Path:
    soc = socs.registry(models).resolve("myboard")
    base = uncalibrated_base(soc, "tflite-gpu", models)
    return write_timings_csv(path, [(g, repr(scale * base.predict(g).total_ms)) for g in graphs])


def test_add_list_calibrate_predict_cli(tmp_path, light_dir, models, capsys):
    add_board(models)
    doc = json.loads((models / "socs.json").read_text("utf-8"))
    assert doc["socs"]["myboard"]["gpu"] == "Mali-G57 MC2"
    # The bundled registry is untouched; the models dir's view has the board, by id or name.
    assert "myboard" not in socs.all_socs()
    assert socs.registry(models).resolve("My Board").id == "myboard"
    assert socs.registry(None).socs == socs.all_socs()

    capsys.readouterr()
    assert cli_main(["socs", "--json", "--models-dir", str(models)]) == 0
    listed = {s["id"]: s for s in json.loads(capsys.readouterr().out)["socs"]}
    assert listed["myboard"]["user_defined"] is True
    assert listed["myboard"]["runtimes"]["tflite-gpu"]["provenance"] == "transfer"
    assert listed["snapdragon888"]["user_defined"] is False
    assert set(listed) == set(socs.all_socs()) | {"myboard"}

    # Uncalibrated it answers as a transfer SoC priced with its own descriptors.
    target = light(light_dir, GRAPHS[4])
    raw = Estimator.load("myboard", "tflite-gpu", models).predict(target)
    assert raw.provenance == "transfer"

    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    csv = timings_csv(tmp_path / "t.csv", models, graphs, 2.0)
    args = ["--soc", "myboard", "--runtime", "tflite-gpu", "--measurements", str(csv)]
    assert cli_main(["calibrate", *args, "--models-dir", str(models)]) == 0
    assert (models / "myboard" / "tflite-gpu" / "calibration.json").is_file()

    capsys.readouterr()
    assert cli_main(["predict", str(target), "--soc", "myboard", "--json"]
                    + ["--models-dir", str(models)]) == 0  # fmt: skip
    answer = json.loads(capsys.readouterr().out)
    assert answer["provenance"] == "calibrated" and answer["soc"] == "myboard"
    assert answer["total_ms"] == pytest.approx(2.0 * raw.total_ms, rel=0.05)

    assert cli_main(["socs", "--models-dir", str(models)]) == 0
    out = capsys.readouterr().out
    assert "myboard: My Board (Mali-G57 MC2) [user-defined]" in out
    assert "tflite-gpu: calibrated" in out
    pairs = {(a["soc"], a["runtime"]): a["provenance"] for a in available(models)}
    assert pairs[("myboard", "tflite-gpu")] == "calibrated"


def test_service_round_trip(tmp_path, light_dir, models):
    from leti.service.app import create_app

    add_board(models)
    client = create_app({"MODELS_DIR": str(models), "TESTING": True}).test_client()
    by_id = {s["id"]: s for s in client.get("/socs").get_json()["socs"]}
    assert by_id["myboard"]["user_defined"] is True
    assert by_id["myboard"]["runtimes"]["tflite-gpu"]["provenance"] == "transfer"
    assert "user_defined" not in by_id["snapdragon888"]

    graphs = [light(light_dir, g) for g in GRAPHS[:4]]
    calibration.calibrate("myboard", "tflite-gpu", timings_csv(tmp_path / "t.csv", models,
                          graphs, 1.5), models)  # fmt: skip
    client = create_app({"MODELS_DIR": str(models), "TESTING": True}).test_client()
    target = light(light_dir, GRAPHS[4])
    r = client.post(
        "/predict?soc=myboard&runtime=tflite-gpu",
        data=target.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["provenance"] == "calibrated"
    by_id = {s["id"]: s for s in client.get("/socs").get_json()["socs"]}
    assert by_id["myboard"]["runtimes"]["tflite-gpu"]["provenance"] == "calibrated"

    # Another models dir does not know the board.
    other = create_app({"MODELS_DIR": str(tmp_path), "TESTING": True}).test_client()
    r = other.post(
        "/predict?soc=myboard", data=target.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--family", "nvidia", "unknown family"),
        ("--fp16-gflops", "-5", "positive"),
        ("--fp32-gflops", "nan", "positive"),
        ("--dram-gbps", "abc", "must be a number"),
        ("--id", "snapdragon888", "clashes"),
        ("--id", "SD888", "lowercase"),
        ("--id", "sd888", "clashes"),
        ("--name", "Snapdragon 888", "clashes"),
    ],
)
def test_bad_board_is_refused_and_nothing_written(models, capsys, flag, value, message):
    before = snapshot(models)
    argv = list(BOARD)
    argv[argv.index(flag) + 1] = value
    assert cli_main(["socs", "add", *argv, "--models-dir", str(models)]) == 2
    assert message in capsys.readouterr().err
    assert snapshot(models) == before
    with pytest.raises(LetiError, match=message):
        socs.add_user_soc(
            models,
            argv[argv.index("--id") + 1],
            name=argv[argv.index("--name") + 1],
            gpu="g",
            family=argv[argv.index("--family") + 1],
            fp16_gflops=argv[argv.index("--fp16-gflops") + 1],
            fp32_gflops=argv[argv.index("--fp32-gflops") + 1],
            dram_gbps=argv[argv.index("--dram-gbps") + 1],
        )
    assert snapshot(models) == before


def test_duplicate_board_is_refused(models, capsys):
    add_board(models)
    before = snapshot(models)
    assert cli_main(["socs", "add", *BOARD, "--models-dir", str(models)]) == 2
    assert "already defined" in capsys.readouterr().err
    assert snapshot(models) == before


def test_a_board_is_edited_and_removed(tmp_path, light_dir, models, capsys):
    """`socs add --replace` edits a board (its numbers change the uncalibrated answer);
    `socs remove` takes it out, refuses a bundled SoC and one that calibrations still use."""
    add_board(models)
    graph = light(light_dir, "squeezenet")
    slow = Estimator.load("myboard", models_dir=models).predict(graph).total_ms
    faster = [*BOARD[:-4], "--fp32-gflops", "480", "--dram-gbps", "34"]
    faster[faster.index("240")] = "960"
    argv = ["socs", "add", *faster, "--models-dir", str(models)]
    assert cli_main(argv) == 2 and "--replace" in capsys.readouterr().err
    assert cli_main([*argv, "--replace"]) == 0
    assert Estimator.load("myboard", models_dir=models).predict(graph).total_ms < slow
    assert socs.read_user_socs(models)["myboard"]["dram_gbps"] == 34

    before = snapshot(models)
    assert cli_main(["socs", "remove", "snapdragon855", "--models-dir", str(models)]) == 2
    assert "bundled" in capsys.readouterr().err
    calibration_file = models / "myboard" / "tflite-gpu" / "calibration.json"
    calibration_file.parent.mkdir(parents=True)
    calibration_file.write_text("{}")
    assert cli_main(["socs", "remove", "myboard", "--models-dir", str(models)]) == 2
    assert "still has calibrations" in capsys.readouterr().err
    calibration_file.unlink()
    assert snapshot(models) == before
    assert cli_main(["socs", "remove", "myboard", "--models-dir", str(models)]) == 0
    assert "myboard" not in socs.read_user_socs(models)
    with pytest.raises(UnknownSocError):
        socs.registry(models).resolve("myboard")


def test_timings_naming_a_missing_graph_change_nothing(tmp_path, light_dir, models, capsys):
    add_board(models)
    graphs = [light(light_dir, g) for g in GRAPHS[:3]]
    csv = tmp_path / "t.csv"
    csv.write_text(
        "graph,latency_ms\n" + f"{graphs[0]},1.0\n" + f"{tmp_path / 'missing.onnx'},3.0\n",
        "utf-8",
    )
    before = snapshot(models)
    argv = ["calibrate", "--soc", "myboard", "--measurements", str(csv)]
    assert cli_main([*argv, "--models-dir", str(models)]) == 2
    err = capsys.readouterr()
    assert "missing.onnx" in err.out + err.err
    assert snapshot(models) == before


def test_unknown_user_soc_and_bad_registry_file(models, tmp_path):
    with pytest.raises(UnknownSocError, match="myboard"):
        Estimator.load("myboard", "tflite-gpu", models)
    (models / "socs.json").write_text("{not json", "utf-8")
    with pytest.raises(SocRegistryError, match="socs.json"):
        socs.registry(models)
