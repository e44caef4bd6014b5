"""``batchrender provenance FILE`` finds the job that made an image a real worker delivered,
also after the copy lost its manifest, was shrunk and re-encoded, or was cropped.

The worker and the CLI read the same environment, so they agree on the index: Redis when
``BATCHRENDER_REDIS_URL`` is set (the default here), SQLite under the home when
``BATCHRENDER_PROVENANCE_INDEX=sqlite``.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.status import JobStatus

pytestmark = pytest.mark.timeout(240)

SIZE = {"width": 256, "height": 256, "steps": 2}


def provenance(env: dict[str, str], file: Path) -> tuple[int, str]:
    """Run the CLI command with exactly the worker's environment."""
    from producer.cli import cli

    res = CliRunner().invoke(cli, ["provenance", str(file)], env=env)
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, res.stdout


def matched_job(output: str) -> str:
    return next(line.split()[-1] for line in output.splitlines() if line.startswith("job id"))


def variants(original: Path, out: Path, stem: str) -> dict[str, Path]:
    """The copies a user is likely to find in the wild."""
    with Image.open(original) as im:
        im.load()
        rgb = im.convert("RGB")
    w, h = rgb.size
    paths = {name: out / f"{stem}-{name}.{ext}" for name, ext in
             (("stripped", "png"), ("third_q60", "jpeg"), ("crop5", "png"))}
    rgb.save(paths["stripped"], "PNG")  # Pillow drops the caBX chunk: same pixels, no manifest
    rgb.resize((w // 3, h // 3), Image.Resampling.LANCZOS).save(paths["third_q60"], "JPEG", quality=60)
    dx, dy = round(w * 0.05), round(h * 0.05)
    rgb.crop((dx, dy, w - dx, h - dy)).save(paths["crop5"], "PNG")
    return {"exact": original, **paths}


def test_provenance_finds_the_job_for_exact_stripped_resized_and_cropped_copies(
        client, br_env, start_worker, tmp_path):
    from provenance.synthetic import encode, noise_render, structured
    from provenance.verify import verify

    worker = start_worker(br_env)
    jobs = [client.submit({"prompt": f"a harbour at dusk {i}", "seed": 100 + i, **SIZE}) for i in range(2)]
    records = [client.wait(j, timeout=90) for j in jobs]
    assert all(r.status is JobStatus.SUCCEEDED for r in records), [r.to_dict() for r in records]
    worker.kill()  # finished and acked; the next worker must not pick up anything of ours

    for job, rec in zip(jobs, records):
        img = rec.result.images[0]
        copies = variants(Path(img.url), tmp_path, job)
        assert verify(copies["stripped"]).state is None, "the re-saved copy really has no manifest"
        for name, copy in copies.items():
            code, out = provenance(br_env, copy)
            assert code == 0, (name, out)
            assert matched_job(out) == job, (name, out)
            assert ("exact file" in out) == (name == "exact"), (name, out)
            assert f"key         {img.key}" in out

    # A render that exists but was never indexed where the CLI looks: a worker writing to SQLite.
    sqlite_env = {**br_env, "BATCHRENDER_PROVENANCE_INDEX": "sqlite"}
    start_worker(sqlite_env)
    other = client.submit({"prompt": "a harbour at dusk 9", "seed": 109, **SIZE})
    other_rec = client.wait(other, timeout=90)
    assert other_rec.status is JobStatus.SUCCEEDED
    other_file = Path(other_rec.result.images[0].url)
    assert Path(br_env["BATCHRENDER_HOME"], "provenance.sqlite").is_file()
    code, out = provenance(sqlite_env, other_file)
    assert code == 0 and matched_job(out) == other, out

    unrelated = {"render-not-in-redis-index": other_file}
    for seed in (1, 2):
        for name, image in (("noise", noise_render(seed, 256)), ("structured", structured(seed, 256))):
            path = tmp_path / f"{name}-{seed}.png"
            path.write_bytes(encode(image, "PNG"))
            unrelated[path.name] = path
    # The SQLite index holds only `other`: the first two renders are unknown there.
    for job, rec in zip(jobs, records):
        code, out = provenance(sqlite_env, Path(rec.result.images[0].url))
        assert code == 1 and out.strip() == "no match", out
    for name, path in unrelated.items():
        code, out = provenance(br_env, path)
        assert code == 1 and out.strip() == "no match", (name, out)


def test_provenance_cli_reports_no_match_on_an_empty_index(br_env, tmp_path):
    from provenance.synthetic import noise_render

    path = tmp_path / "x.jpeg"
    buf = io.BytesIO()
    noise_render(5, 128).save(buf, "JPEG")
    path.write_bytes(buf.getvalue())
    assert provenance(br_env, path) == (1, "no match\n")
