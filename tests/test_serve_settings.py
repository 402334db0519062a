"""Operator controls without a model: keys the service refuses at start, limits' validation, the rate limiter's
buckets, and names escaped in the CLI's output."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from arcface.gallery import Gallery
from arcface.inference.contract import ModelContract
from arcface.serve.settings import Settings, SettingsError
from conftest import run_cli


@pytest.mark.parametrize("key", ["clé-secrète", "key with space", "tab\tkey", "snowman\u2603", "nul\x00key"])
def test_keys_that_no_header_can_carry_are_refused_at_start(tmp_path, key):
    with pytest.raises(SettingsError, match="printable ASCII"):
        Settings(gallery=tmp_path, api_keys=(key,))
    with pytest.raises(SettingsError, match="printable ASCII"):
        Settings.load(env={"ARCFACE_API_KEY": key}, gallery=tmp_path)


def test_cli_serve_refuses_a_non_ascii_key(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARCFACE_API_KEY", "pässword")
    rc, _, err = run_cli(capsys, "serve", "--gallery", tmp_path / "g")
    assert rc == 1 and "printable ASCII" in err and "Traceback" not in err
    assert not (tmp_path / "g").exists()  # refused before anything was created


def test_limits_are_validated(tmp_path):
    s = Settings(gallery=tmp_path, api_keys=("k",))
    assert (s.max_pixels, s.header_timeout, s.body_timeout, s.rate_limit, s.store_filenames, s.docs) == (
        16_000_000, 10.0, 60.0, 20.0, False, True,
    )  # fmt: skip
    for field, bad in (("header_timeout", 0), ("body_timeout", -1), ("rate_limit", float("inf")),
                       ("max_connections_per_client", -1), ("rate_burst", 0), ("docs", "yes"),
                       ("store_filenames", 1), ("busy_timeout", "1")):  # fmt: skip
        with pytest.raises(SettingsError, match=field):
            Settings(gallery=tmp_path, api_keys=("k",), **{field: bad})
    assert Settings(gallery=tmp_path, api_keys=("k",), rate_limit=0, max_connections_per_client=0).rate_limit == 0


def test_rate_limiter_buckets():
    from arcface.serve.guard import RateLimiter

    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", now=0.0)
    assert wait == pytest.approx(0.5)  # one token every 0.5 s
    assert limiter.take("b", now=0.0) == 0.0  # another key, another bucket
    assert limiter.take("a", now=0.5) == 0.0 and limiter.take("a", now=0.5) > 0
    assert limiter.take("a", now=100.0) == 0.0  # refilled (never above the burst)
    assert RateLimiter(rate=0, burst=1).take("x") == 0.0  # off
    small = RateLimiter(rate=1.0, burst=1, max_buckets=2)
    for k in "xyz":
        small.take(k, now=0.0)
    assert small.take("x", now=0.0) == 0.0  # forgotten (least recent), so it starts full


def test_cli_escapes_names(tmp_path, capsys):
    """A name stored before names were checked (or by another tool) cannot rewrite the terminal."""
    contract = ModelContract("r50", 8)
    with Gallery.open(tmp_path, contract) as g:
        g.add_face(g.add_identity("plain"), np.ones(8), contract.id)
    db = sqlite3.connect(tmp_path / "gallery.sqlite3", isolation_level=None)
    try:
        db.execute("INSERT INTO identities (name, metadata, created) VALUES (?, '{}', 0)", ("evil\x1b[2J\u202ename",))
    finally:
        db.close()
    rc, out, _ = run_cli(capsys, "gallery", "list", "--gallery", tmp_path)
    assert rc == 0 and "\x1b" not in out and "\u202e" not in out
    assert "evil\\x1b[2J\\u202ename" in out and "plain" in out


def test_gallery_uri_in_settings_is_kept_validated_and_masked(tmp_path):
    uri = "postgresql://svc:t0p-s3cret@db.example:5432/faces?gallery=team"
    s = Settings(gallery=uri, api_keys=("k",))
    assert s.gallery == uri and "t0p-s3cret" not in repr(s)
    assert s.gallery_display == "postgresql://svc:***@db.example:5432/faces?gallery=team"
    assert Settings(gallery=tmp_path / "g", api_keys=("k",)).gallery == tmp_path / "g"
    assert Settings(gallery=f"sqlite://{tmp_path}/g", api_keys=("k",)).gallery == tmp_path / "g"
    f = tmp_path / "serve.yaml"
    f.write_text("gallery: milvus://root:pw-in-file@10.0.0.5:19530?gallery=prod\n")
    assert Settings.load(f, env={}).gallery == "milvus://root:pw-in-file@10.0.0.5:19530?gallery=prod"
    for bad in ("mysql://u:hunter2@h/db", "postgresql://u:hunter2@h/db?gallery=No-Caps"):
        with pytest.raises(SettingsError, match="gallery") as e:
            Settings(gallery=bad, api_keys=("k",))
        assert "hunter2" not in str(e.value)
