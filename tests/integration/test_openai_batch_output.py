"""An OpenAI batch's output file is written a line at a time (issue 26, low): with
``response_format: b64_json`` every image is in it, base64; built as one string it cost 4.7 times
the file's size in memory at once."""
from __future__ import annotations

import base64
import json
import os
import tracemalloc

import pytest

from tests.workers import finish_with

pytestmark = pytest.mark.timeout(240)


def test_a_b64_json_batch_output_file_is_written_in_bounded_memory(client, tenants, capsys):
    from producer import openai_batches
    from producer.files import Files

    alice = tenants.create("alice")
    n, size = 24, 1024 * 1024
    lines = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/images/generations",
                                "body": {"prompt": f"a box {i}", "model": "tiny", "size": "256x256",
                                         "response_format": "b64_json"}}) + "\n" for i in range(n))
    source = Files(client).create(alice.tenant_id, "in.jsonl", "batch", lines.encode())
    info, errors = openai_batches.create(client, alice.tenant_id, json.dumps({
        "input_file_id": source.id, "endpoint": "/v1/images/generations", "completion_window": "24h"}).encode())
    assert not errors, errors
    outputs = {}
    for rec in client.batch_results(info["id"]):
        outputs[rec.custom_id] = os.urandom(size)
        finish_with(client, rec.job_id, outputs[rec.custom_id])
    info = client.store.batch_info(info["id"])
    oa = info["meta"]["openai"]

    tracemalloc.start()
    try:
        output_id, error_id, _ = openai_batches.finalize(client, info, oa, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    files = Files(client)
    record = files.get(alice.tenant_id, output_id)
    file_size = record.bytes
    with capsys.disabled():
        print(f"\nb64_json output file of {n} x {size // 1024} KiB images: {file_size / 2**20:.1f} MiB; "
              f"peak traced memory while writing it {peak / 2**20:.1f} MiB ({peak / file_size:.2f}x)")
    assert error_id is None
    seen = {}
    for line in files.content(record).decode().splitlines():
        row = json.loads(line)
        seen[row["custom_id"]] = base64.b64decode(row["response"]["body"]["data"][0]["b64_json"])
    assert seen == outputs, "every image, whole, once"
    assert peak < file_size / 4, f"peak {peak} bytes for a {file_size}-byte file: built in memory"
