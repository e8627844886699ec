"""loadtest.peers: the peers' own environments, and a peer that cannot be installed reported as skipped
with the reason (results.json and the report), never dropped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from loadtest import bench_report, peers, sweeps, targets
from loadtest.checks import check_answer
from loadtest.images import load_samples
from loadtest.plan import Plan


def _failing_pip(calls: list[list[str]]) -> Callable[[list[str], str], None]:
    def runner(command: list[str], what: str) -> None:
        calls.append(command)
        if what == "pip install":
            Path(command[0]).parent.parent.joinpath("half-installed").write_text("")
            raise peers.PeerUnavailable(
                "pip install exited with 1: No matching distribution found for litserve"
            )
        Path(command[-1], "bin").mkdir(parents=True)  # what `python -m venv` leaves

    return runner


def test_failed_install_leaves_no_half_environment_to_reuse(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    peer = peers.PEERS["litserve"]
    with pytest.raises(peers.PeerUnavailable, match="No matching distribution found for litserve"):
        peers.ensure_venv(peer, cache=tmp_path, runner=_failing_pip(calls))
    assert [call[1:3] for call in calls] == [["-m", "venv"], ["-m", "pip"]]
    assert any(requirement.startswith("litserve") for requirement in calls[1])
    assert not peers.venv_dir(peer, tmp_path).exists()  # removed: the next run installs again
    with pytest.raises(peers.PeerUnavailable, match="no cached environment"):
        peers.ensure_venv(peer, cache=tmp_path, create=False, runner=_failing_pip(calls))
    assert len(calls) == 2  # create=False never installs


def test_cached_environment_is_used_without_installing(tmp_path: Path) -> None:
    peer = peers.PEERS["bentoml"]
    folder = peers.venv_dir(peer, tmp_path)
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").write_text("")
    (folder / ".cxr-bench-complete").write_text("")

    def never(command: list[str], what: str) -> None:
        raise AssertionError(f"installed again: {command}")

    assert peers.ensure_venv(peer, cache=tmp_path, runner=never) == (folder / "bin" / "python", 0.0)
    # Other requirements (another framework, another pinned version) get another folder.
    assert peers.venv_dir(peers.PEERS["litserve"], tmp_path) != folder
    assert peers.venv_dir(peers.PEERS["bentoml-pillow"], tmp_path) == folder  # same packages, other decoder


def test_peer_whose_install_fails_is_reported_skipped_not_dropped(
    tiny_model: Path, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "CACHE", tmp_path / "venvs")
    monkeypatch.setattr(peers, "_run", _failing_pip([]))
    plan = Plan(
        model_dir=tiny_model,
        samples=load_samples([image_folder], formats={"jpeg"}),
        out_dir=tmp_path,
        targets=["litserve", "bentoml-pillow"],
        log_dir=tmp_path / "logs",
    )
    plan.shrink()

    runs, _, _, peer_info = sweeps.measure_targets(plan)

    assert runs == []
    assert set(peer_info) == {"litserve", "bentoml-pillow"}
    for name, info in peer_info.items():
        assert "No matching distribution" in info["skipped"], name
    section = "\n".join(bench_report.peers_section(peer_info))
    assert "| LitServe (the service's decoder) | **skipped**: pip install exited with 1" in section
    assert "| BentoML (Pillow decoder) | **skipped**:" in section
    # Skipped peers are not measured: the acceptance check says so instead of passing or failing.
    assert bench_report._best_peer({"peer": None, "litserve": None}) is None
    assert bench_report._best_peer({"peer": 3.0, "litserve": 5.0}) == 5.0


def test_triton_upload_is_one_bytes_tensor_holding_the_file(image_folder: Path) -> None:
    """Triton's binary tensor extension: a JSON header of the length the header field says, then the BYTES
    element (4-byte little-endian length, then the file), `binary_data_size` long."""
    sample = load_samples([image_folder], formats={"jpeg"})[0]
    (request,) = peers.upload_samples(peers.PEERS["pytriton"], [sample])
    length = int(request.headers["Inference-Header-Content-Length"])
    header, tensor = json.loads(request.data[:length]), request.data[length:]
    (image,) = header["inputs"]
    assert (image["name"], image["datatype"], image["shape"]) == ("image", "BYTES", [1, 1])
    assert image["parameters"]["binary_data_size"] == len(tensor)
    assert int.from_bytes(tensor[:4], "little") == len(sample.data) and tensor[4:] == sample.data
    assert request.headers["Content-Type"] == "application/octet-stream"


def test_multipart_upload_carries_the_file_unchanged(image_folder: Path) -> None:
    import asyncio

    from multipart.multipart import parse_options_header  # python-multipart, as the peers' servers parse it
    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    (sample,) = load_samples([image_folder], formats={"jpeg"})[:1]
    (form,) = peers.upload_samples(peers.PEERS["bentoml"], [sample])
    assert peers.upload_samples(peers.PEERS["litserve"], [sample]) == [sample]  # raw body: as it is
    content_type, _ = parse_options_header(form.content_type)
    assert content_type == b"multipart/form-data"

    async def stream():  # type: ignore[no-untyped-def]
        yield form.data

    parsed = asyncio.run(MultiPartParser(Headers({"content-type": form.content_type}), stream()).parse())
    upload = parsed["image"]
    assert upload.filename == sample.name
    assert asyncio.run(upload.read()) == sample.data


_STARTED = [
    pytest.param(name, setting, id=f"{name}-{setting.label.replace(' ', '').replace(',', '-')}")
    for name in ["bentoml", "bentoml-pillow", "litserve-pillow", "pytriton", "pytriton-pillow"]
    for setting in peers.PEERS[name].settings
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "setting"), _STARTED)
def test_peer_answers_from_its_cached_environment(
    name: str, setting: peers.Setting, tiny_model: Path, image_folder: Path, tmp_path: Path
) -> None:
    """Every setting the bench tries, answered in the shape the bench checks (BentoML's max-batch-1
    setting, an unbatched API, once answered a bare object: 100 % errors in a docs run)."""
    peer = peers.PEERS[name]
    try:
        python, _ = peers.ensure_venv(peer, create=False)
    except peers.PeerUnavailable as error:
        pytest.skip(f"{name}: {error} (`cxr bench --targets {name}` creates it)")
    port = targets.free_port()
    command, env = peers.command(peer, python, tiny_model, port, setting, 30.0)
    with targets.launch(
        name, command, tmp_path / f"{name}.log", ready_path=peer.ready_path, port=port, env=env, timeout_s=180
    ) as running:
        for sample in peers.upload_samples(peer, load_samples([image_folder], formats={"jpeg", "png"})):
            response = httpx.post(
                running.url + peer.path, content=sample.data, headers=sample.headers, timeout=60
            )
            assert check_answer(response.status_code, response.content, 1, full=False) is None, sample.name
    # Nothing of the peer outlives the bench: its framework's own worker processes neither (LitServe's did).
    left = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if f"--port {port}" in " ".join(p.info["cmdline"] or [])
    ]
    assert left == []


def test_a_setting_that_does_not_start_is_listed_and_the_others_kept() -> None:
    info = {
        "bentoml": {
            "environment_created_s": 0.0,
            "chosen": "max batch 8, 1 worker",
            "settings": [
                {"setting": "max batch 8, 1 worker", "clients": 64, "images_per_s": 20.0, "p99_ms": 900.0,
                 "error_rate": 0.0},
                {"setting": "max batch 1, 2 workers", "clients": 64, "skipped": "did not start (exited with 1)"},
                {"setting": "max batch 8, 2 workers", "clients": 64, "images_per_s": 0.0, "p99_ms": None,
                 "error_rate": 1.0, "errors": {"no results for 1 images": 146}},
            ],
        }
    }  # fmt: skip
    section = "\n".join(bench_report.peers_section(info))
    assert "| max batch 8, 1 worker (kept) | 64 | 20.0 |" in section
    assert "max batch 1, 2 workers: **did not start**: did not start (exited with 1)" in section
    assert "| 100.0 % (no results for 1 images: 146) |" in section  # what the errors were, not only how many
