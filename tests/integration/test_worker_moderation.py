"""Moderation through real worker processes: a blocked prompt never reaches the GPU and a blocked
output never becomes a stored, signed or delivered image.

Prompts come from the labelled set in tests/data/moderation/prompts.jsonl. The output stage is
driven by a perceptual-hash blocklist holding the hash of an image the tiny model really renders
for a given seed (rendered once first by a worker without the blocklist).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from jobs.status import JobStatus

pytestmark = pytest.mark.timeout(240)

DATA = Path(__file__).resolve().parents[1] / "data" / "moderation" / "prompts.jsonl"
IMAGE_SUFFIXES = (".png", ".jpeg", ".webp")
SMALL = {"width": 64, "height": 64, "steps": 2}


def labelled(label: str, count: int) -> list[str]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return [r["prompt"] for r in rows if r["label"] == label and r.get("variant") == "plain"][:count]


#: Clearly blocked prompts from the labelled set, with the category each must be blocked under.
BLOCKED = [(p, "minors_sexual") for p in labelled("minors_sexual", 2)] + \
          [(p, "real_person_sexual") for p in labelled("real_person_sexual", 2)]


def storage_root(env) -> Path:
    return Path(env["BATCHRENDER_STORAGE_URL"].removeprefix("file://"))


def stored_images(env) -> list[Path]:
    root = storage_root(env)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in IMAGE_SUFFIXES
                  and not p.name.endswith(".thumb.webp")) if root.exists() else []


def audit_entries(env) -> list[dict]:
    path = Path(env["BATCHRENDER_HOME"]) / "moderation" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def send_straight_to_queue(client, request: dict) -> str:
    """Publish a render message the way a buggy or hostile producer would: no prompt check."""
    from jobs.names import RENDER_TASK, render_queue

    msg = client.prepare(request)
    assert client.store.create(msg)
    client.app.send_task(RENDER_TASK, args=[msg.model_dump(mode="json")], task_id=msg.job_id,
                         queue=render_queue(msg.request.model))
    return msg.job_id


def test_labelled_prompts_used_here_are_what_they_claim():
    assert len(BLOCKED) == 4 and all(p for p, _ in BLOCKED)


def test_producer_blocks_prompt_and_never_queues_it(client, br_env, redis_url, start_worker):
    import redis

    r = redis.Redis.from_url(redis_url)
    blocked = {client.submit({"prompt": p, **SMALL}): cat for p, cat in BLOCKED}
    for job, category in blocked.items():
        rec = client.status(job)
        assert rec.status is JobStatus.BLOCKED, rec.to_dict()
        assert rec.error["code"] == "moderation_blocked" and category in rec.error["categories"]
        assert rec.result.moderation["blocking_stage"] == "prompt_rules"
        assert rec.attempts == 0 and rec.result.images == []
    assert r.llen("render.tiny") == 0, "a blocked prompt must never be published"

    benign = client.submit({"prompt": "a ceramic mug on a walnut table", "seed": 1, **SMALL})
    assert r.llen("render.tiny") == 1  # control: the queue key is the one we watch
    w = start_worker(br_env)
    assert client.wait(benign, timeout=60).status is JobStatus.SUCCEEDED
    files = stored_images(br_env)
    assert files and all(benign in str(p) for p in files)
    assert not any(job in w.log() for job in blocked), "the worker must never see a blocked job"

    entries = audit_entries(br_env)
    for job, category in blocked.items():
        [entry] = [e for e in entries if e["job_id"] == job]
        assert entry["action"] == "block" and entry["kind"] == "prompt" and category in entry["categories"]
    text = (Path(br_env["BATCHRENDER_HOME"]) / "moderation" / "audit.jsonl").read_text()
    assert not any(p in text for p, _ in BLOCKED), "the audit log keeps a prompt hash, never the prompt"


def test_worker_blocks_prompt_sent_straight_to_the_queue_without_loading_the_model(client, br_env, start_worker):
    w = start_worker(br_env)
    jobs = {send_straight_to_queue(client, {"prompt": p, "seed": 5, **SMALL}): cat for p, cat in BLOCKED}
    for job, category in jobs.items():
        rec = client.wait(job, timeout=60)
        assert rec.status is JobStatus.BLOCKED, rec.to_dict()
        assert rec.error["code"] == "moderation_blocked" and category in rec.error["categories"]
        assert rec.result.moderation["blocking_stage"] == "prompt_rules"
        assert rec.result.timings.render_s == 0 and rec.result.timings.load_s == 0
        assert rec.result.images == [] and rec.progress in (None, {})
        assert rec.attempts == 1  # the worker claimed it, then refused it
    assert stored_images(br_env) == [], "nothing stored, quarantine included"
    assert not (storage_root(br_env) / "_quarantine").exists()
    assert "loaded model" not in w.log(), "a blocked prompt must not cost a model load"

    entries = audit_entries(br_env)
    for job, category in jobs.items():
        [entry] = [e for e in entries if e["job_id"] == job]  # the worker's own check
        assert entry["actor"] == "worker" and entry["action"] == "block" and category in entry["categories"]
    text = (Path(br_env["BATCHRENDER_HOME"]) / "moderation" / "audit.jsonl").read_text()
    assert not any(p in text for p, _ in BLOCKED)

    # Control: the same worker does load the model (and log it) for an allowed prompt.
    ok = send_straight_to_queue(client, {"prompt": "a red bicycle against a brick wall", "seed": 5, **SMALL})
    assert client.wait(ok, timeout=60).status is JobStatus.SUCCEEDED
    assert "loaded model tiny" in w.log()


def test_default_nsfw_classifier_scores_every_output_in_the_worker(client, br_env, start_worker):
    # Nothing configures it: open_nsfw is on by default and runs on the worker's CPU.
    start_worker(br_env)
    job = client.submit({"prompt": "a lighthouse at dusk, oil painting", "seed": 3, "num_images": 2, **SMALL})
    rec = client.wait(job, timeout=90)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    outputs = [e for e in audit_entries(br_env) if e["job_id"] == job and e["kind"] == "output_image"]
    assert len(outputs) == 2
    for e in outputs:
        [v] = [v for v in e["verdicts"] if v["stage"] == "nsfw_classifier"]
        assert v["action"] == "allow", e


def test_worker_with_the_nsfw_classifier_off_runs_no_output_classifier(client, br_env, start_worker):
    start_worker({**br_env, "BATCHRENDER_NSFW_CLASSIFIER": "off"})
    job = client.submit({"prompt": "a lighthouse at dusk, oil painting", "seed": 3, **SMALL})
    assert client.wait(job, timeout=90).status is JobStatus.SUCCEEDED
    outputs = [e for e in audit_entries(br_env) if e["job_id"] == job and e["kind"] == "output_image"]
    assert outputs and all(v["stage"] != "nsfw_classifier" for e in outputs for v in e["verdicts"])


def test_blocked_job_error_names_the_stage(client, br_env, start_worker):
    prompt, category = BLOCKED[0]
    by_producer = client.submit({"prompt": prompt, **SMALL})
    start_worker(br_env)
    by_worker = send_straight_to_queue(client, {"prompt": prompt, **SMALL})
    for job in (by_producer, client.wait(by_worker, timeout=60).job_id):
        error = client.status(job).error
        assert error["stage"] == "prompt_rules" and category in error["categories"], error


def test_output_blocklist_quarantines_blocked_image_and_flags_flagged_one(client, br_env, start_worker, tmp_path,
                                                                         settings_for):
    from jobs.errors import UnsafeKey
    from safety.phash import hamming, phash, to_hex
    from storage import open_storage

    block_req = {"prompt": "an abstract texture study", "seed": 21, **SMALL}
    flag_req = {"prompt": "an abstract texture study", "seed": 22, **SMALL}

    # 1. Render both seeds once, without a blocklist, to learn the hashes of what the model makes.
    first = start_worker(br_env)
    originals = [client.wait(client.submit(r), timeout=60) for r in (block_req, flag_req)]
    assert all(rec.status is JobStatus.SUCCEEDED for rec in originals)
    hashes = []
    for rec in originals:
        with Image.open(rec.result.images[0].url) as im:
            hashes.append(phash(im))
    assert hamming(*hashes) > 16, "the two renders must not match each other's blocklist entry"
    first.kill()  # both jobs are finished and acked: no need for a warm shutdown

    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(f"# test entries\n{to_hex(hashes[0])} minors_sexual\n{to_hex(hashes[1])} nudity\n")
    env = {**br_env, "BATCHRENDER_PHASH_BLOCKLIST": str(blocklist)}
    before = set(stored_images(env))

    # 2. A worker with the blocklist renders the same seeds again.
    start_worker(env)
    blocked_job, flagged_job = client.submit(block_req), client.submit(flag_req)
    rec = client.wait(blocked_job, timeout=60)
    assert rec.status is JobStatus.BLOCKED, rec.to_dict()
    assert rec.error["code"] == "moderation_blocked" and rec.error["categories"] == ["minors_sexual"]
    assert rec.result.moderation["blocking_stage"] == "phash_blocklist"
    assert rec.result.images == [], "a blocked output has no result image and no URL"

    root = storage_root(env)
    key = f"single/{blocked_job}/0.png"
    held = root / "_quarantine" / key
    assert held.is_file(), sorted(map(str, root.rglob("*")))
    assert not (root / key).exists(), "no public object"
    assert json.loads(held.with_name(held.name + ".json").read_text())["metadata"]["job_id"] == blocked_job
    with Image.open(held) as im:
        assert im.format == "PNG" and phash(im) == hashes[0]
    store = open_storage(settings_for(env))
    with pytest.raises(UnsafeKey):
        store.url_for(f"_quarantine/{key}")
    from provenance.verify import verify
    assert verify(held.read_bytes()).state is None, "quarantined images are kept unsigned"

    flagged = client.wait(flagged_job, timeout=60)
    assert flagged.status is JobStatus.SUCCEEDED, flagged.to_dict()
    [img] = flagged.result.images
    assert img.flags == ["nudity"] and Path(img.url).is_file() and img.c2pa == "signed"

    new = set(stored_images(env)) - before
    assert new == {held, Path(img.url)}, new

    entries = audit_entries(env)
    [out_block] = [e for e in entries if e["job_id"] == blocked_job and e["kind"] == "output_image"]
    assert out_block["action"] == "block" and out_block["stage"] == "phash_blocklist"
    assert out_block["category"] == "minors_sexual"
    [out_flag] = [e for e in entries if e["job_id"] == flagged_job and e["kind"] == "output_image"]
    assert out_flag["action"] == "flag" and out_flag["category"] == "nudity"
    assert all("prompt" not in e for e in entries if e["job_id"] in (blocked_job, flagged_job))


def test_output_block_below_the_reroll_severity_is_rendered_again_with_a_new_seed(client, br_env, start_worker,
                                                                                tmp_path):
    from safety.phash import phash, to_hex

    req = {"prompt": "an abstract texture study", "seed": 31, **SMALL}
    never = {"prompt": "an abstract texture study", "seed": 32, **SMALL}
    first = start_worker(br_env)
    originals = [client.wait(client.submit(r), timeout=60) for r in (req, never)]
    hashes = []
    for rec in originals:
        with Image.open(rec.result.images[0].url) as im:
            hashes.append(phash(im))
    first.kill()

    # graphic_violence has severity 6 (re-rolled below 7); minors_sexual has 10 (never re-rolled).
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(f"{to_hex(hashes[0])} graphic_violence\n{to_hex(hashes[1])} minors_sexual\n")
    env = {**br_env, "BATCHRENDER_PHASH_BLOCKLIST": str(blocklist), "BATCHRENDER_MODERATION_REROLL_MAX": "2",
           "BATCHRENDER_MODERATION_REROLL_BELOW_SEVERITY": "7"}
    start_worker(env)
    rerolled, blocked = client.submit(req), client.submit(never)
    rec = client.wait(rerolled, timeout=90)
    assert rec.status is JobStatus.SUCCEEDED, rec.to_dict()
    assert rec.result.images[0].seed != 31 and rec.request["seed"] != 31
    assert any("_quarantine" in str(p) and rerolled in str(p) for p in storage_root(env).rglob("*.png"))
    rec = client.wait(blocked, timeout=60)
    assert rec.status is JobStatus.BLOCKED and rec.error["categories"] == ["minors_sexual"]
    assert rec.attempts == 1
