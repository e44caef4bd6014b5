import pytest

from jobs.errors import ConfigurationError
from jobs.settings import Settings


def test_settings_come_from_prefixed_environment_variables():
    s = Settings.from_env({"BATCHRENDER_MAX_STEPS": "40", "BATCHRENDER_WEBHOOK_ALLOW_HOSTS": "a.example, 10.0.0.0/8"})
    assert s.max_steps == 40
    assert s.webhook_allow_hosts == ["a.example", "10.0.0.0/8"]


def test_unknown_setting_is_refused_by_name():
    with pytest.raises(ConfigurationError, match="BATCHRENDER_MAX_STEP"):
        Settings.from_env({"BATCHRENDER_MAX_STEP": "4"})


def test_bad_value_names_the_variable():
    with pytest.raises(ConfigurationError, match="BATCHRENDER_MAX_STEPS"):
        Settings.from_env({"BATCHRENDER_MAX_STEPS": "many"})


def test_visibility_timeout_must_outlast_the_hard_time_limit():
    with pytest.raises(ConfigurationError, match="visibility_timeout_s"):
        Settings.from_env({"BATCHRENDER_VISIBILITY_TIMEOUT_S": "60", "BATCHRENDER_HARD_TIME_LIMIT_S": "120",
                           "BATCHRENDER_SOFT_TIME_LIMIT_S": "100"})


def test_secrets_never_appear_in_repr():
    s = Settings.from_env({"BATCHRENDER_S3_SECRET_ACCESS_KEY": "hunter2-secret",
                           "BATCHRENDER_WEBHOOK_SECRET": "whsec_c2VjcmV0"})
    assert "hunter2" not in repr(s) and "c2VjcmV0" not in repr(s) and "hunter2" not in str(s)
    assert s.s3_secret_access_key.get_secret_value() == "hunter2-secret"


def test_empty_variables_mean_unset_for_optional_settings(tmp_path):
    """docker-compose passes ${C2PA_CERT_CHAIN:-} as an empty string: that must read as "not
    configured" (dev keys), not as the path "." (the worker crashed at start: "Is a directory")."""
    from jobs.settings import Settings

    s = Settings.from_env({"BATCHRENDER_HOME": str(tmp_path), "BATCHRENDER_C2PA_CERT_CHAIN": "",
                           "BATCHRENDER_C2PA_PRIVATE_KEY": "", "BATCHRENDER_POLICY_FILE": "",
                           "BATCHRENDER_DEVICE": ""})
    assert s.c2pa_cert_chain is None and s.c2pa_private_key is None and s.policy_file is None and s.device is None


def test_render_options_are_off_by_default_and_read_from_the_environment():
    s = Settings.from_env({})
    assert (s.compile_unet, s.compile_vae, s.compile_mode, s.compile_backend) == (False, False, "default", "inductor")
    assert (s.sdpa_backend, s.prompt_cache_size, s.vae_slicing, s.channels_last) == ("auto", 0, "auto", False)
    s = Settings.from_env({"BATCHRENDER_COMPILE_VAE": "true", "BATCHRENDER_COMPILE_MODE": "max-autotune",
                           "BATCHRENDER_COMPILE_BACKEND": "eager", "BATCHRENDER_SDPA_BACKEND": "math",
                           "BATCHRENDER_PROMPT_CACHE_SIZE": "256", "BATCHRENDER_VAE_SLICING": "always"})
    assert (s.compile_vae, s.compile_mode, s.compile_backend) == (True, "max-autotune", "eager")
    assert (s.sdpa_backend, s.prompt_cache_size, s.vae_slicing) == ("math", 256, "always")


@pytest.mark.parametrize("name, value, allowed", [
    ("VAE_SLICING", "sometimes", "'auto', 'always' or 'never'"),
    ("COMPILE_MODE", "fast", "'default', 'reduce-overhead', 'max-autotune' or 'max-autotune-no-cudagraphs'"),
    ("SDPA_BACKEND", "xformers", "'auto', 'flash', 'efficient', 'cudnn' or 'math'"),
    ("PROMPT_CACHE_SIZE", "-1", "greater than or equal to 0"),
])
def test_a_bad_render_option_names_its_variable_and_what_is_allowed(name, value, allowed):
    with pytest.raises(ConfigurationError) as e:
        Settings.from_env({f"BATCHRENDER_{name}": value})
    assert f"BATCHRENDER_{name}" in str(e.value) and allowed in str(e.value)


def test_secrets_never_appear_in_dumps_or_repr_and_the_real_values_stay_usable():
    # issue 26: model_dump() carried the Redis password (redis_url is a plain str, a URL with a password).
    s = Settings.from_env({
        "BATCHRENDER_REDIS_URL": "redis://:hunter2@127.0.0.1:6379/3",
        "BATCHRENDER_STORAGE_URL": "s3://bucket/prefix",
        "BATCHRENDER_S3_ENDPOINT_URL": "http://minio:s3cret-pw@127.0.0.1:9000",
        "BATCHRENDER_PUBLIC_BASE_URL": "https://render.example.com/?token=tok-abc",
        "BATCHRENDER_C2PA_TSA_URL": "http://tsa:tsa-pw@tsa.example",
        "BATCHRENDER_S3_SECRET_ACCESS_KEY": "sk-value", "BATCHRENDER_WEBHOOK_SECRET": "whsec_c2VjcmV0",
        "BATCHRENDER_METRICS_TOKEN": "metrics-tok", "BATCHRENDER_SECRETS_KEY": "fernet-key",
    })
    secrets = ("hunter2", "s3cret-pw", "tok-abc", "tsa-pw", "sk-value", "c2VjcmV0", "metrics-tok", "fernet-key")
    for shown in (repr(s), str(s), str(s.model_dump()), s.model_dump_json(), str(s.model_dump(mode="json"))):
        leaked = [x for x in secrets if x in shown]
        assert not leaked, f"{leaked} in {shown[:200]}..."
    dumped = s.model_dump()
    assert dumped["redis_url"] == "redis://:***@127.0.0.1:6379/3"
    assert dumped["s3_endpoint_url"] == "http://minio:***@127.0.0.1:9000"
    # the settings themselves keep the real values for what connects with them
    assert s.redis_url == "redis://:hunter2@127.0.0.1:6379/3"
    assert s.s3_endpoint_url == "http://minio:s3cret-pw@127.0.0.1:9000"
    assert s.public_base_url == "https://render.example.com/?token=tok-abc"
    assert s.webhook_secret.get_secret_value() == "whsec_c2VjcmV0"
    assert s.model_copy(update={"max_steps": 7}).redis_url == s.redis_url
