"""`cvae studio`: its API served by the real command on a free port, then the page itself in
a real browser (Debian's chromium through chromedriver)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import subprocess
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from PIL import Image

from cvae.quality.classifier import build_classifier
from cvae.registry.store import file_md5
from cvae.studio import MAX_UPLOAD_BYTES, SLIDER_LIMIT
from tests.browser import chromium
from tests.conftest import BIN, stage_env, tiny_cvae
from tests.servers import free_ports, stop_group, wait_for

NAMES = ["Male", "Smiling", "Eyeglasses", "Bald"]
TABLE = np.array([[1, -1, 1, -1], [-1, 1, -1, -1], [1, 1, -1, 1], [-1, -1, 1, -1]], dtype=np.float32)
READY_SECONDS = 120


def _trained_tiny_model(path: Path) -> None:
    """A 16 px model of NAMES, trained for one short epoch on random faces."""
    keras.utils.set_random_seed(0)
    model = tiny_cvae(n_attributes=len(NAMES), attribute_names=NAMES, attribute_rows=TABLE)
    rng = np.random.default_rng(0)
    images = rng.random((32, 16, 16, 3), dtype=np.float32)
    conditions = TABLE[rng.integers(len(TABLE), size=32)]
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(images, conditions, batch_size=16, epochs=1, verbose=0)
    model.save(path)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    files = SimpleNamespace(model=root / "cvae.keras", classifier=root / "classifier.keras",
                            face=root / "face.jpg", truncated=root / "truncated.jpg", notes=root / "notes.png",
                            bomb=root / "bomb.png", large=root / "large.png", empty=root / "empty.png")
    _trained_tiny_model(files.model)
    build_classifier(16, NAMES, [8]).save(files.classifier)
    pixels = np.random.default_rng(1).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(files.face, quality=95)
    files.truncated.write_bytes(files.face.read_bytes()[: files.face.stat().st_size // 2])
    files.notes.write_text("a shopping list, not a face\n")
    Image.new("1", (20_000, 20_000)).save(files.bomb)  # a few kB that would decode to 400 megapixels
    Image.new("1", (8_000, 6_000)).save(files.large)  # 48 megapixels: below Pillow's guard, above the studio's
    files.empty.write_bytes(b"")
    port = free_ports(1)[0]
    log = root / "studio.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "cvae"), "studio", "--model", str(files.model), "--classifier", str(files.classifier),
             "--port", str(port)],
            cwd=root, env=stage_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            urllib.request.urlopen(f"{url}/api/model", timeout=2).close()
        except OSError:
            return False
        return True

    wait_for(answers, "cvae studio", server, log, seconds=READY_SECONDS)  # TensorFlow and the model load first
    try:
        yield SimpleNamespace(url=url, log=log, server=server, **vars(files))
    finally:
        stop_group(server)


def post(studio, path: str, body, headers: dict | None = None) -> tuple[int, Message, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(studio.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def face(studio, **body) -> bytes:
    status, headers, png = post(studio, "/api/face", {"attributes": dict.fromkeys(NAMES, 0.0), **body})
    assert status == 200, png
    assert headers["Content-Type"] == "image/png" and headers["Server-Timing"].startswith("decode;dur=")
    return png


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def refusal(studio, path: str, body, headers: dict | None = None) -> tuple[int, str]:
    status, _, answer = post(studio, path, body, headers)
    assert status >= 400, answer[:200]
    return status, json.loads(answer)["error"]


def test_the_model_description_names_every_attribute(studio):
    with urllib.request.urlopen(f"{studio.url}/api/model") as response:
        described = json.loads(response.read())
    assert described["attributes"] == NAMES
    assert described["limit"] == SLIDER_LIMIT > 1  # wider than the -1/+1 the model trained on
    assert described["directions"] == 4 and described["uploads"] is True
    assert described["model"]["cvae:model_md5"] == file_md5(studio.model)


def test_the_page_needs_nothing_from_outside(studio):
    with urllib.request.urlopen(studio.url + "/") as response:
        page = response.read().decode()
    assert "<script>" in page and "src=\"http" not in page and "href=\"http" not in page and "@import" not in page


def test_a_seed_gives_the_same_face_and_the_sliders_change_it(studio):
    first, again = face(studio, seed=1234), face(studio, seed=1234)
    assert first == again
    assert pixels(first).shape == (16, 16, 3)
    smiling = face(studio, seed=1234, attributes={**dict.fromkeys(NAMES, 0.0), "Smiling": 2.5})
    turned = face(studio, seed=1234, directions=[0.0, 2.0])
    other_seed = face(studio, seed=99)
    for changed in (smiling, turned, other_seed):
        assert np.abs(pixels(changed).astype(int) - pixels(first)).max() > 0


def test_random_rows_come_from_the_training_table_and_follow_the_seed(studio):
    drawn = [json.loads(post(studio, "/api/random", {"seed": 7})[2]) for _ in range(2)]
    assert drawn[0] == drawn[1] and drawn[0]["seed"] == 7
    assert [drawn[0]["attributes"][name] for name in NAMES] in TABLE.tolist()
    fresh = json.loads(post(studio, "/api/random", {})[2])
    assert 0 <= fresh["seed"] < 2**31


def test_the_download_carries_its_provenance(studio, tmp_path):
    attributes = {**dict.fromkeys(NAMES, 0.0), "Eyeglasses": 1.5}
    status, headers, png = post(studio, "/api/face?download=1", {"attributes": attributes, "seed": 42})
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    path = tmp_path / "face.png"
    path.write_bytes(png)
    printed = subprocess.run([str(BIN / "cvae"), "provenance", str(path)], env=stage_env(), capture_output=True,
                             text=True, check=True).stdout
    recorded = dict(line.split(": ", 1) for line in printed.splitlines())
    assert recorded["seed"] == "42" and recorded["model_md5"] == file_md5(studio.model)
    assert json.loads(recorded["attributes"])["Eyeglasses"] == 1.5
    assert pixels(png).tolist() == pixels(face(studio, seed=42, attributes=attributes)).tolist()


@pytest.mark.parametrize("body, message", [
    ({"attributes": {"Smilling": 1.0}, "seed": 1}, "did you mean 'Smiling'"),
    ({"attributes": {"Smiling": 3.5}, "seed": 1}, "outside the sliders' range"),
    ({"attributes": {"Smiling": "lots"}, "seed": 1}, "not a number"),
    ({"attributes": {}, "seed": -3}, "seed -3"),
    ({"attributes": {}, "directions": [0, 0, 0, 0, 0]}, "at most 4"),
    ({"attributes": {}, "photo": "0123456789abcdef"}, "upload it again"),
])
def test_bad_requests_are_refused_with_a_message(studio, body, message):
    assert message in refusal(studio, "/api/face", body)[1]


def test_a_photo_is_cropped_read_and_then_steered(studio):
    status, _, answer = post(studio, "/api/photo", studio.face.read_bytes(), {"X-File-Name": "face.jpg"})
    assert status == 200, answer
    read = json.loads(answer)
    assert set(read["attributes"]) == set(NAMES) and set(read["attributes"].values()) <= {-1.0, 1.0}
    for key in ("input", "reconstruction"):
        assert read[key].startswith("data:image/png;base64,")
    reconstruction = face(studio, photo=read["id"], attributes=read["attributes"])
    edited = face(studio, photo=read["id"], attributes={**read["attributes"], "Smiling": -read["attributes"]["Smiling"] * 2})
    assert np.abs(pixels(edited).astype(int) - pixels(reconstruction)).max() > 0
    status, _, png = post(studio, "/api/face?download=1", {"photo": read["id"], "attributes": read["attributes"]})
    assert Image.open(io.BytesIO(png)).text["cvae:source"] == "face.jpg"


def test_broken_uploads_get_a_message_and_the_server_goes_on(studio):
    for path, message in ((studio.notes, "not an image"), (studio.truncated, "cannot read the image"),
                          (studio.bomb, "far too many pixels"), (studio.large, "8000 x 6000 pixels"),
                          (studio.empty, "empty")):
        status, error = refusal(studio, "/api/photo", path.read_bytes(), {"X-File-Name": path.name})
        assert status == 400 and path.name in error and message in error, error
    # too large: refused on its declared length, before the body is sent
    connection = http.client.HTTPConnection(studio.url.removeprefix("http://"), timeout=60)
    connection.putrequest("POST", "/api/photo")
    connection.putheader("Content-Length", str(MAX_UPLOAD_BYTES + 1))
    connection.putheader("X-File-Name", "huge.png")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "huge.png" in json.loads(response.read())["error"]
    connection.close()
    assert studio.server.poll() is None
    assert face(studio, seed=1)  # still serving


def test_a_remote_address_needs_the_explicit_flag(studio):
    result = subprocess.run([str(BIN / "cvae"), "studio", "--model", str(studio.model), "--host", "0.0.0.0"],
                            env=stage_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "--allow-remote" in result.stderr


# --- the page in a real browser --------------------------------------------------------------

FACE_HASH = """
const image = document.getElementById(arguments[0]);
const canvas = document.createElement("canvas");
canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(image, 0, 0);
return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data).join(",");
"""


@pytest.mark.slow
def test_the_page_in_a_real_browser(studio, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = chromium(tmp_path / "profile", downloads)
    wait = WebDriverWait(browser, 60)
    try:
        def renders() -> int:
            return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-renders") or 0)

        def after_render(action) -> str:
            before = renders()
            action()
            wait.until(lambda _: renders() > before)
            return hashlib.sha256(browser.execute_script(FACE_HASH, "face").encode()).hexdigest()

        browser.get(studio.url + "/")
        wait.until(lambda _: browser.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        labels = [label.text for label in browser.find_elements(By.CSS_SELECTOR, "#attributes label span")]
        assert labels == [name.replace("_", " ") for name in NAMES]

        # a slider moved with the keyboard, as a person would: the picture changes
        start = hashlib.sha256(browser.execute_script(FACE_HASH, "face").encode()).hexdigest()
        smiling = browser.find_elements(By.CSS_SELECTOR, "#attributes input")[NAMES.index("Smiling")]
        moved = after_render(lambda: smiling.send_keys(*[Keys.ARROW_RIGHT] * 20))
        assert moved != start
        assert float(browser.find_element(By.TAG_NAME, "body").get_attribute("data-latency-ms")) > 0

        # "new random face" twice with the same seed: the same face
        seed = browser.find_element(By.ID, "seed")
        seed.clear()
        seed.send_keys("1234")
        browser.find_element(By.ID, "keep-seed").click()
        first = after_render(lambda: browser.find_element(By.ID, "random").click())
        second = after_render(lambda: browser.find_element(By.ID, "random").click())
        assert first == second and seed.get_attribute("value") == "1234"

        # download, and read its provenance back
        browser.find_element(By.ID, "download").click()
        wait.until(lambda _: [p for p in downloads.glob("*.png")])
        [downloaded] = downloads.glob("*.png")
        printed = subprocess.run([str(BIN / "cvae"), "provenance", str(downloaded)], env=stage_env(),
                                 capture_output=True, text=True, check=True).stdout
        assert "seed: 1234" in printed and f"model_md5: {file_md5(studio.model)}" in printed

        # a photo: cropped, read, reconstructed, then the same sliders act on it
        photo = browser.find_element(By.ID, "photo")
        after_render(lambda: photo.send_keys(str(studio.face)))
        assert browser.find_element(By.ID, "input").get_attribute("src").startswith("data:image/png")
        assert browser.find_element(By.ID, "before").get_attribute("src").startswith("data:image/png")
        assert browser.find_element(By.ID, "photo-name").text == "face.jpg"
        assert browser.find_element(By.ID, "message").text == ""

        # a broken file: a message on the page, and the studio still answers
        photo.send_keys(str(studio.notes))
        wait.until(lambda _: "not an image" in browser.find_element(By.ID, "message").text)
        assert after_render(lambda: smiling.send_keys(Keys.ARROW_LEFT))
        browser.save_screenshot(str(tmp_path / "studio.png"))
    finally:
        browser.quit()
