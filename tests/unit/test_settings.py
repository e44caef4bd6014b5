"""Settings read from the environment."""
from __future__ import annotations


def test_empty_variables_mean_unset_for_optional_settings(tmp_path):
    """docker-compose passes ${C2PA_CERT_CHAIN:-} as an empty string: that must read as "not
    configured" (dev keys), not as the path "." (the worker crashed at start: "Is a directory")."""
    from jobs.settings import Settings

    s = Settings.from_env({"BATCHRENDER_HOME": str(tmp_path), "BATCHRENDER_C2PA_CERT_CHAIN": "",
                           "BATCHRENDER_C2PA_PRIVATE_KEY": "", "BATCHRENDER_POLICY_FILE": "",
                           "BATCHRENDER_DEVICE": ""})
    assert s.c2pa_cert_chain is None and s.c2pa_private_key is None and s.policy_file is None and s.device is None
