"""Signed output links: bound to their path, refused once expired or altered."""
from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import pytest

from jobs.errors import ConfigurationError
from jobs.schemas import ImageResult, OutputFormat
from jobs.settings import Settings
from storage.links import LinkLifetimeTooLong, Links
from storage.local import LocalStorage


def _links(tmp_path, **settings) -> Links:
    return Links(Settings(**settings), LocalStorage(tmp_path), b"k" * 32)


def _image() -> ImageResult:
    return ImageResult(index=1, key="b/j/1.png", url="/abs/b/j/1.png", seed=5, width=8, height=8,
                       format=OutputFormat.PNG, sha256="a" * 64, pixel_sha256="b" * 64, bytes=10,
                       thumbnail_key="b/j/1.png.thumb.webp")


def test_a_signed_link_verifies_only_for_its_path_and_until_it_expires(tmp_path):
    links = _links(tmp_path)
    url, expires = links.signed("/v1/jobs/j/outputs/1", "http://api")
    q = parse_qs(urlparse(url).query)
    assert url.startswith("http://api/v1/jobs/j/outputs/1?") and expires > time.time()
    assert links.verify("/v1/jobs/j/outputs/1", q["expires"][0], q["signature"][0])
    assert not links.verify("/v1/jobs/j/outputs/2", q["expires"][0], q["signature"][0]), "other path"
    assert not links.verify("/v1/jobs/j/outputs/1", str(int(q["expires"][0]) + 1), q["signature"][0]), "longer life"
    assert not links.verify("/v1/jobs/j/outputs/1", "soon", q["signature"][0])
    assert not links.verify("/v1/jobs/j/outputs/1", q["expires"][0], None)
    other = Links(Settings(), LocalStorage(tmp_path), b"x" * 32)
    assert not other.verify("/v1/jobs/j/outputs/1", q["expires"][0], q["signature"][0]), "another key"
    past = int(time.time()) - 1
    assert not links.verify("/p", past, links._mac("/p", past)), "expired"


def test_a_link_expiring_further_ahead_than_the_cap_is_refused_though_its_mac_verifies(tmp_path):
    """A key that leaked (or a bug) must not mint links that work for years: 2100 is refused."""
    links = _links(tmp_path, link_max_ttl_s=3600, presign_expiry_s=600)
    y2100 = 4102444800
    assert not links.verify("/p", y2100, links._mac("/p", y2100)), "MAC good, expiry beyond the cap"
    beyond = int(time.time()) + 3600 + 120
    assert not links.verify("/p", beyond, links._mac("/p", beyond))
    within = int(time.time()) + 3500
    assert links.verify("/p", within, links._mac("/p", within))
    url, expires = links.signed("/p")
    q = parse_qs(urlparse(url).query)
    assert links.verify("/p", q["expires"][0], q["signature"][0]) and expires <= time.time() + 600


def test_signing_longer_than_the_cap_is_refused_naming_the_setting(tmp_path):
    """Refused, not shortened: whoever asks learns the cap instead of a link that dies early."""
    links = _links(tmp_path, link_max_ttl_s=3600, presign_expiry_s=600)
    with pytest.raises(LinkLifetimeTooLong, match=r"at most 3600 s \(BATCHRENDER_LINK_MAX_TTL_S\); 7200 s was asked"):
        links.signed("/p", expires_s=7200)
    assert links.signed("/p", expires_s=3600)[1] <= time.time() + 3600
    with pytest.raises(ConfigurationError, match=r"presign_expiry_s \(7200\) must be at most link_max_ttl_s \(3600\)"):
        Settings.from_env({"BATCHRENDER_PRESIGN_EXPIRY_S": "7200", "BATCHRENDER_LINK_MAX_TTL_S": "3600"})
    assert Settings().link_max_ttl_s == 7 * 24 * 3600


def test_view_replaces_stored_urls_with_links_made_now(tmp_path):
    links = _links(tmp_path, public_base_url="https://render.example.com")
    view = links.view("j", _image(), base="http://ignored:8000")
    assert view["url"] == "https://render.example.com/v1/jobs/j/outputs/1", "public_base_url wins"
    assert view["download_url"].startswith(view["url"] + "?expires=")
    assert view["thumbnail_url"].startswith(view["url"] + "/thumbnail?expires=")
    assert "thumbnail_key" not in view and view["seed"] == 5
    again = links.refresh([{**_image().model_dump(mode="json"), "custom": 1}], "j")[0]
    assert again["url"] == view["url"] and again["custom"] == 1 and "thumbnail_key" not in again
    assert links.refresh([{"url": "x"}], "j") == [{"url": "x"}], "not an image: left as it was"
    plain = _links(tmp_path).view("j", _image())
    assert plain["url"] == "/v1/jobs/j/outputs/1", "no base: a path"


def test_a_stored_view_refreshed_at_delivery_keeps_its_thumbnail_link(tmp_path):
    """A webhook payload stores views (no thumbnail_key); the link refresh before each delivery
    attempt made thumbnail_url null. It is made anew; an image without a thumbnail stays null."""
    links = _links(tmp_path)
    stored = links.refresh([_image().model_dump(mode="json")], "j")[0]  # what the event records
    assert stored["thumbnail_url"] and "thumbnail_key" not in stored
    delivered = links.refresh([stored], "j")[0]
    assert delivered["thumbnail_url"], delivered
    assert delivered["thumbnail_url"].split("?")[0] == stored["url"] + "/thumbnail"
    bare = _links(tmp_path).view("j", _image().model_copy(update={"thumbnail_key": None}))
    assert links.refresh([bare], "j")[0]["thumbnail_url"] is None


def test_a_job_without_a_tenant_has_no_stable_url_since_no_key_opens_it(tmp_path):
    """The stable URL admits the job's tenant's key; a CLI job has no tenant, so none could open
    it (404 for every key): its url is null, its signed links remain, and a refresh keeps it so."""
    links = _links(tmp_path)
    view = links.view("j", _image(), stable=False)
    assert view["url"] is None and "signature=" in view["download_url"] and view["thumbnail_url"]
    assert links.refresh([view], "j")[0]["url"] is None
    assert links.refresh([_image().model_dump(mode="json")], "j", stable=False)[0]["url"] is None
    assert links.refresh([links.view("j", _image())], "j")[0]["url"] == "/v1/jobs/j/outputs/1"



def test_a_jobs_possible_output_keys_cover_images_thumbnails_and_renditions():
    from jobs.schemas import JobMessage, RenderRequest
    from storage.links import job_output_keys

    req = RenderRequest(prompt="p", width=64, height=64, steps=2, num_images=2, output_format="png",
                        renditions=[{"name": "square", "width": 64, "height": 64},
                                    {"name": "web", "width": 64, "height": 64, "format": "webp"}])
    msg = JobMessage(job_id="job_1", batch_id="b1", request=req)
    assert job_output_keys(Settings(), msg) == [
        "b1/job_1/0.png", "b1/job_1/0.png.thumb.webp", "b1/job_1/0.square.png", "b1/job_1/0.web.webp",
        "b1/job_1/1.png", "b1/job_1/1.png.thumb.webp", "b1/job_1/1.square.png", "b1/job_1/1.web.webp"]
    # Keys that do not name the job may be another job's: none are offered for deletion.
    assert job_output_keys(Settings(key_template="{custom_id}.{ext}"), msg) == []
