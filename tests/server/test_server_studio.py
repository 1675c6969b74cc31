"""The teachable camera's server as a new user finds it (issue 15): every tab learns that
training started, a run reports only its own events, the model knows what it was
trained on across restarts, uploads succeed file by file and name the bad ones, the
samples can be reviewed (thumbnails) and deleted one by one, the advanced settings are
checked, and per-class accuracy on held-out samples follows each run.

Driven through the HTTP API and the WebSocket (Starlette's TestClient) with real photos
(scikit-image).
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")

from starlette.testclient import TestClient  # noqa: E402

from edgetune.runtime.personalizer import Personalizer  # noqa: E402
from edgetune.runtime.store import SampleStore  # noqa: E402
from edgetune.server import default_bundle  # noqa: E402
from edgetune.server.app import create_app  # noqa: E402
from edgetune.server.limits import Limits  # noqa: E402

HOST = {"host": "127.0.0.1:8321"}  # what a browser on this machine sends


@pytest.fixture(scope="session")
def default_bundle_path(edgetune_cache):
    return default_bundle(cache_dir=edgetune_cache)


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def photos():
    """Six 224-pixel crops each of three real photos: a cat, coffee, a rocket."""
    from skimage import data

    rng = np.random.default_rng(1)
    out = {}
    for name, image in (("cat", data.chelsea()), ("coffee", data.coffee()),
                        ("rocket", data.rocket())):
        h, w = image.shape[:2]
        frames = []
        for _ in range(6):
            side = int(min(h, w) * rng.uniform(0.7, 1.0))
            top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            crop = Image.fromarray(image[top:top + side, left:left + side]).resize((224, 224))
            frames.append(jpeg(np.asarray(crop)))
        out[name] = frames
    return out


@contextlib.contextmanager
def client_for(bundle, profile, **kwargs):
    personalizer = Personalizer(bundle, profile=profile)
    try:
        with TestClient(create_app(personalizer, **kwargs), base_url="http://127.0.0.1:8321",
                        raise_server_exceptions=False) as client:
            yield client, personalizer
    finally:
        personalizer.close()


def upload(client, label, frames, names=None):
    names = names or [f"{label}-{i}.jpg" for i in range(len(frames))]
    return client.post("/api/samples", data={"label": label},
                       files=[("files", (n, f, "image/jpeg")) for n, f in zip(names, frames)])


def setup_classes(client, photos, names=("cat", "coffee"), n=4):
    for name in names:
        assert client.post("/api/classes", json={"name": name}).status_code == 201
        assert upload(client, name, photos[name][:n]).status_code == 200


def next_of(ws, kind: str, limit: int = 500) -> dict:
    for _ in range(limit):
        message = ws.receive_json()
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind!r} message")


def wait_idle(client, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = client.get("/api/state").json()
        if not state["training"]:
            return state
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.05)


# ----------------------------------------------------------------------- training state


def test_another_tab_learns_that_training_started_and_each_run_reports_its_own_events(
        default_bundle_path, tmp_path, photos):
    with client_for(default_bundle_path, tmp_path / "p") as (client, _):
        setup_classes(client, photos)
        with client.websocket_connect("/ws", headers=HOST) as other:
            assert next_of(other, "state")["training"] is False
            assert client.post("/api/train", json={"epochs": 200}).status_code == 202
            started = next_of(other, "training_started")
            state = next_of(other, "state")  # pushed, not asked for: the pill and Stop follow
            assert state["training"] is True and state["run"]["run"] == started["run"]
            first = next_of(other, "training_done")["run"]
        assert [e["event"] for e in first["events"]].count("early_stop") == 1
        # a second run without early stop must not show the first run's note
        assert client.post("/api/train", json={"epochs": 3, "early_stop": False}).status_code \
            == 202
        second = wait_idle(client)["run"]
        assert second["run"] == 2 and second["settings"]["early_stop"] is False
        assert [e["event"] for e in second["events"]] == ["kept"], second["events"]
        assert [p[0] for p in second["points"]] == [1, 2, 3]


def test_after_a_restart_new_samples_still_mark_the_model_stale_and_new_classes_untrained(
        default_bundle_path, tmp_path, photos):
    profile = tmp_path / "p"
    with client_for(default_bundle_path, profile) as (client, _):
        setup_classes(client, photos)
        assert client.post("/api/train", json={"epochs": 5}).status_code == 202
        state = wait_idle(client)
        assert state["trained"] and not state["stale"] and state["untrained"] == []
    with client_for(default_bundle_path, profile) as (client, _):
        state = client.get("/api/state").json()
        assert state["trained"] and not state["stale"]
        # renaming keeps the model up to date, across the restart too
        assert client.patch("/api/classes?name=coffee", json={"name": "mug"}).status_code == 200
    with client_for(default_bundle_path, profile) as (client, p):
        assert not client.get("/api/state").json()["stale"]
        # one sample removed and another added: the counts are equal, the samples are not
        cats = [s.id for s in p.samples() if s.label == "cat"]
        assert client.delete(f"/api/samples/{cats[0]}").status_code == 200
        assert upload(client, "cat", photos["cat"][4:5]).status_code == 200
        state = client.get("/api/state").json()
        assert state["stale"] and state["untrained"] == []
        assert client.get("/api/model.onnx").status_code == 200  # stale, but every class known
        setup_classes(client, photos, names=("rocket",), n=3)
        state = client.get("/api/state").json()
        assert state["stale"] and state["untrained"] == ["rocket"]
        refused = client.get("/api/model.onnx")
        assert refused.status_code == 409 and "rocket" in refused.json()["error"]
        assert client.post("/api/train", json={"epochs": 5}).status_code == 202
        state = wait_idle(client)
        assert not state["stale"] and state["untrained"] == []
        assert client.get("/api/model.onnx").status_code == 200


# ----------------------------------------------------------------------- settings


@pytest.mark.parametrize("body, code, words", [
    ({"epochs": 0}, "bad_epochs", "between 1"),
    ({"epochs": -5}, "bad_epochs", "between 1"),
    ({"epochs": 2.5}, "bad_epochs", "whole number"),
    ({"epochs": 99999}, "bad_epochs", "10000"),
    ({"epochs": "30"}, "bad_epochs", "whole number"),
    ({"batch_size": 0}, "bad_settings", "batch size"),
    ({"batch_size": 2.5}, "bad_settings", "whole number"),
    ({"batch_size": 100000}, "bad_settings", "4096"),
    ({"lr": 0}, "bad_settings", "above 0"),
    ({"lr": -0.1}, "bad_settings", "above 0"),
    ({"lr": "fast"}, "bad_settings", "number"),
    ({"early_stop": "yes"}, "bad_json", "true or false"),
    ({"epochs": 5, "momentum": 0.9}, "bad_settings", "momentum"),
])
def test_training_settings_are_checked_and_the_error_names_the_value(
        default_bundle_path, tmp_path, photos, body, code, words):
    with client_for(default_bundle_path, tmp_path / "p") as (client, p):
        setup_classes(client, photos, n=3)
        refused = client.post("/api/train", json=body)
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == code and words in refused.json()["error"]
        assert not p.is_training


def test_settings_are_used_and_per_class_held_out_accuracy_follows_the_run(
        default_bundle_path, tmp_path, photos):
    with client_for(default_bundle_path, tmp_path / "p") as (client, _):
        defaults = client.get("/api/state").json()["settings"]
        assert defaults["lr"] == pytest.approx(0.01) and defaults["batch_size"] == 32
        setup_classes(client, photos, names=("cat", "coffee", "rocket"), n=6)
        with client.websocket_connect("/ws", headers=HOST) as ws:
            body = {"epochs": 40, "batch_size": 4, "lr": 0.005, "early_stop": True}
            assert client.post("/api/train", json=body).status_code == 202
            report = next_of(ws, "evaluation")["evaluation"]
        # 6 samples a class: 1 held out (20%), a head trained like this one on the other 5
        assert report["n"] == 3 and report["train"] == 15
        assert set(report["per_class"]) == {"cat", "coffee", "rocket"}
        for cls in report["per_class"].values():
            assert cls["n"] == 1 and cls["accuracy"] in (0.0, 1.0)
        assert report["accuracy"] >= 2 / 3  # three distinct photos: at most one miss
        run = client.get("/api/state").json()["run"]
        assert run["evaluation"] == report
        assert run["settings"] == {"batch_size": 4, "lr": 0.005, "early_stop": True}
        # a renamed class keeps its held-out accuracy, under its new name
        assert client.patch("/api/classes?name=cat", json={"name": "kitten"}).status_code == 200
        renamed = client.get("/api/state").json()["run"]["evaluation"]["per_class"]
        assert list(renamed) == ["kitten", "coffee", "rocket"]
        assert renamed["kitten"] == report["per_class"]["cat"]


# ----------------------------------------------------------------------- samples


def test_an_upload_adds_the_good_files_and_names_the_bad_ones(default_bundle_path, tmp_path,
                                                             photos):
    with client_for(default_bundle_path, tmp_path / "p") as (client, p):
        client.post("/api/classes", json={"name": "cat"})
        tiny = jpeg(np.zeros((8, 8, 3), np.uint8))
        huge = io.BytesIO()  # 41 megapixels, over the server's limit of 40
        Image.new("RGB", (8000, 5125), "gray").save(huge, "PNG")
        files = [photos["cat"][0], b"this is not an image", tiny, photos["cat"][1],
                 huge.getvalue()]
        names = ["good1.jpg", "notes.jpg", "icon.jpg", "good2.jpg", "huge.png"]
        answer = upload(client, "cat", files, names)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["added"] == 2 and p.counts() == {"cat": 2}
        by_name = {f["file"]: f for f in result["files"]}
        assert isinstance(by_name["good1.jpg"]["id"], int) and "error" not in by_name["good2.jpg"]
        assert by_name["notes.jpg"]["error"].startswith("notes.jpg: not a readable image")
        assert by_name["icon.jpg"]["error"].startswith("icon.jpg: image is 8x8")
        assert by_name["huge.png"]["error"].startswith("huge.png: image is 8000x5125")
        assert "max_pixels" not in by_name["huge.png"]["error"]
        for f in result["files"]:
            assert "bytes (" not in f.get("error", "")
        refused = upload(client, "cat", [b"junk", b""], ["a.png", "b.png"])
        assert refused.status_code == 400 and p.counts() == {"cat": 2}
        assert "a.png" in refused.json()["error"] and "b.png" in refused.json()["error"]
        assert [f["file"] for f in refused.json()["files"]] == ["a.png", "b.png"]


def test_each_sample_has_a_thumbnail_and_can_be_deleted_alone(default_bundle_path, tmp_path,
                                                             photos):
    with client_for(default_bundle_path, tmp_path / "p") as (client, p):
        setup_classes(client, photos, n=3)
        with client.websocket_connect("/ws", headers=HOST) as ws:  # a camera frame gets one too
            ws.send_json({"type": "record", "label": "coffee"})
            next_of(ws, "recording")
            ws.send_bytes(photos["coffee"][5])
            recorded = next_of(ws, "recorded")
        listed = client.get("/api/samples?label=coffee").json()["samples"]
        assert [s["id"] for s in listed][-1] == recorded["id"] and len(listed) == 4
        assert listed[-1]["source"] == "camera" and listed[0]["source"] == "upload:coffee-0.jpg"
        for sample in listed:
            answer = client.get(f"/api/samples/{sample['id']}/thumbnail.jpg")
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "image/jpeg"
            thumb = Image.open(io.BytesIO(answer.content))
            assert thumb.size == (96, 96) and len(answer.content) < 8000
        # the thumbnail is what the model saw: close to the photo, shrunk
        photo = np.asarray(Image.open(io.BytesIO(photos["coffee"][0])).resize((96, 96)), float)
        first = client.get(f"/api/samples/{listed[0]['id']}/thumbnail.jpg").content
        assert np.abs(np.asarray(Image.open(io.BytesIO(first)), float) - photo).mean() < 12
        removed = listed[1]["id"]
        state = client.delete(f"/api/samples/{removed}").json()
        assert {c["name"]: c["count"] for c in state["classes"]} == {"cat": 3, "coffee": 3}
        assert removed not in [s.id for s in p.samples()]
        assert client.get(f"/api/samples/{removed}/thumbnail.jpg").status_code == 400
        assert client.get("/api/samples?label=").status_code == 400


def test_a_store_from_before_thumbnails_is_migrated_and_its_samples_still_listed(tmp_path):
    path = tmp_path / "samples.sqlite"
    with SampleStore(path) as store:
        (old,) = store.add(np.ones(4, np.float32), "mug")
    with sqlite3.connect(path) as conn:  # make it a schema-2 store, as edgetune 0.x wrote
        conn.execute("ALTER TABLE samples DROP COLUMN thumbnail")
        conn.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
    with SampleStore(path, read_only=True) as store:
        assert store.thumbnail(old) is None  # read as it is
    with SampleStore(path) as store:
        assert store.get_meta("schema_version") == "3"
        assert store.thumbnail(old) is None
        (new,) = store.add(np.ones(4, np.float32), "mug")
        store.set_thumbnails([new], [b"\xff\xd8 a jpeg"])
        assert store.thumbnail(new) == b"\xff\xd8 a jpeg"
        assert [s.id for s in store.samples()] == [old, new]


def test_an_idle_server_releases_the_models_and_makes_them_again(default_bundle_path,
                                                                 tmp_path, photos):
    with client_for(default_bundle_path, tmp_path / "p",
                    limits=Limits(idle_seconds=0.4)) as (client, p):
        setup_classes(client, photos)
        answer = client.post("/api/predict", content=photos["cat"][5],
                             headers={"content-type": "image/jpeg"}).json()
        assert answer["label"] == "cat" and p._sessions.roles
        deadline = time.monotonic() + 30
        while p._sessions.roles and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p._sessions.roles == [], "released after 0.4 s unused"
        again = client.post("/api/predict", content=photos["cat"][5],
                            headers={"content-type": "image/jpeg"}).json()
        again.pop("ms"), answer.pop("ms")  # how long it took
        assert again == answer and p._sessions.roles == [p._sessions.base_role]
