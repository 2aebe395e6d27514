"""The dashboard's security and pages over real HTTP, without a browser: the sign-in and its cookie, CSRF
refusals, the Content-Security-Policy and markup that needs nothing it forbids, escaping of every string a
user gave, and one key never seeing another's data. Jobs are finished as a worker would
(tests/app/finished_job.py); tests/app/test_dashboard_browser.py drives a real Chromium through a real run.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.dashboard.headers import CONTENT_SECURITY_POLICY
from app.dashboard.image_scores import image_miou
from app.dashboard.site import SESSION_COOKIE
from tests.app.conftest import new_key
from tests.app.finished_job import add_segmenter, finish_job, run_queued_tasks
from tests.app.service import ApiServer, make_dataset_zip, small_dataset, upload
from tests.app.test_predictions import png, zip_of

# What a hostile uploader puts in names; none of it may ever become markup.
HOSTILE_CLASS = "<script id=pwned-class>alert(1)</script>"
HOSTILE_STEM = "<img src=x id=pwned-file onerror=alert(2)>"
HOSTILE_DATASET = "<svg id=pwned-dataset onload=alert(3)>.zip"
HOSTILE_WORD = "<b id=pwned-word>word</b>"
HOSTILE = (HOSTILE_CLASS, HOSTILE_STEM, HOSTILE_DATASET, HOSTILE_WORD)
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
DROPPED = "img05"


def hostile_dataset(root: Path, images: int = 6) -> Path:
    """The small test dataset with class `circle` renamed HOSTILE_CLASS and image img01 renamed HOSTILE_STEM."""
    small_dataset(root, images)
    for name in ("classes.txt", "tags.csv"):
        text = (root / name).read_text().replace("circle", HOSTILE_CLASS)
        (root / name).write_text(text.replace("img01.png", f"{HOSTILE_STEM}.png"))
    for folder in ("images", "masks"):
        (root / folder / "img01.png").rename(root / folder / f"{HOSTILE_STEM}.png")
    return root


class DashboardSession:
    """A browser's side of the dashboard over plain HTTP: its cookie jar, and the forms' CSRF token."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, headers={"Accept": "text/html"}, timeout=60)

    def page(self, path: str, status: int = 200) -> str:
        response = self.http.get(path)
        assert response.status_code == status, (path, response.status_code, response.text[:500])
        return response.text

    def token(self, path: str = "/dashboard/sign-in") -> str:
        return CSRF_FIELD.search(self.page(path)).group(1)

    def sign_in(self, key: str) -> httpx.Response:
        response = self.http.post("/dashboard/sign-in", data={"csrf_token": self.token(), "api_key": key})
        assert response.status_code == 303, response.text
        return response

    def post(self, path: str, data: dict, token_from: str = "/dashboard/jobs") -> httpx.Response:
        return self.http.post(path, data={"csrf_token": self.token(token_from), **data})


class Markup(HTMLParser):
    """Every tag of a page with its attributes, and its text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.tags if "id" in attrs}


def assert_nothing_the_csp_forbids(page: str) -> None:
    """Scripts only from files, no inline handlers or styles: what `script-src 'self'` and `style-src 'self'`
    would block anyway, so that the pages work under their own policy."""
    markup = Markup(page)
    for tag, attrs in markup.tags:
        assert tag != "style" and "style" not in attrs, (tag, attrs)
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        if tag == "script":
            assert attrs.get("src", "").startswith("/dashboard/static/"), attrs
        for name in ("href", "src", "action"):
            assert not attrs.get(name, "").lower().startswith("javascript:"), attrs


@pytest.fixture
def dataset_id(alice, tmp_path):
    zip_path = make_dataset_zip(hostile_dataset(tmp_path / "hostile"), tmp_path / HOSTILE_DATASET)
    response = upload(alice, zip_path)
    assert response.status_code == 200 and response.json()["state"] == "ready", response.text
    return response.json()["id"]


@pytest.fixture
def job_id(settings, alice, dataset_id):
    response = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"})
    assert response.status_code == 201, response.text
    finish_job(settings, response.json()["id"], failed_image=DROPPED)
    return response.json()["id"]


@pytest.fixture
def alice_dashboard(api, alice):
    """The dashboard signed in with the key of `alice`, who owns the dataset and the job."""
    session = DashboardSession(api.url)
    session.sign_in(alice.headers["Authorization"].removeprefix("Bearer "))
    return session


def test_signing_in_keeps_the_key_out_of_urls_cookies_and_logs(settings):
    access_log = Records()
    with ApiServer(settings, log_level="info") as server, capturing("uvicorn.access", access_log):
        key = new_key(settings, "carol")
        browser = DashboardSession(server.url)
        first = browser.http.get("/dashboard/jobs")
        assert first.status_code == 303 and first.headers["location"] == "/dashboard/sign-in"

        form = Markup(browser.page("/dashboard/sign-in"))
        posted = next(
            attrs for tag, attrs in form.tags if tag == "form" and attrs.get("action") == "/dashboard/sign-in"
        )
        assert posted["method"] == "post"
        field = next(attrs for tag, attrs in form.tags if tag == "input" and attrs.get("name") == "api_key")
        assert field["type"] == "password"

        refused = browser.http.post("/dashboard/sign-in", data={"csrf_token": browser.token(), "api_key": key + "x"})
        assert refused.status_code == 401 and key not in refused.text
        assert browser.http.get("/dashboard/jobs").status_code == 303

        signed_in = browser.sign_in(key)
        assert signed_in.headers["location"] == "/dashboard/jobs"
        cookie = signed_in.headers["set-cookie"]
        flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
        assert "httponly" in flags and flags["samesite"].lower() == "samesite=strict"
        assert flags["path"] == "path=/dashboard"
        payload = json.loads(base64.b64decode(browser.http.cookies[SESSION_COOKIE].split(".")[0]))
        assert set(payload) == {"key", "csrf"} and isinstance(payload["key"], int)
        assert key not in cookie
        jobs_page = browser.page("/dashboard/jobs")
        assert "carol" in jobs_page and key not in jobs_page

        browser.post("/dashboard/sign-out", {})
        assert browser.http.get("/dashboard/jobs").status_code == 303
    lines = [record.getMessage() for record in access_log.records]
    assert any("POST /dashboard/sign-in" in line for line in lines), lines
    assert not any(key in line for line in lines)


def test_a_tampered_cookie_or_a_revoked_key_signs_nobody_in(api, settings):
    from app.db import create_db_engine, make_sessionmaker, session_scope
    from app.security import revoke_key

    key = new_key(settings, "dave")
    browser = DashboardSession(api.url)
    browser.sign_in(key)
    value = browser.http.cookies[SESSION_COOKIE]
    payload, signature = value.split(".", 1)
    forged = base64.b64encode(json.dumps({"key": 1, "csrf": "x"}).encode()).decode()
    browser.http.cookies.set(SESSION_COOKIE, f"{forged}.{signature}", path="/dashboard")
    assert browser.http.get("/dashboard/jobs").status_code == 303
    browser.http.cookies.set(SESSION_COOKIE, value, path="/dashboard")
    assert browser.http.get("/dashboard/jobs").status_code == 200
    with ApiServer(settings) as second:  # another API process on the data dir: the same secret
        assert httpx.get(second.url + "/dashboard/jobs", cookies={SESSION_COOKIE: value}).status_code == 200

    engine = create_db_engine(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        revoke_key(session, key_ref=key[:11])
    engine.dispose()
    assert browser.http.get("/dashboard/jobs").status_code == 303
    assert (settings.data_dir / "dashboard_secret").stat().st_mode & 0o077 == 0


def test_every_form_post_needs_the_sessions_token(api, settings, alice, bob, alice_dashboard, job_id):
    image = "img00"
    override = {"class": "square", "action": "use", "word": "box", "image": image}
    page = f"/dashboard/jobs/{job_id}/images/{image}"
    for token in (None, "", "forged", DashboardSession(api.url).token()):
        data = override if token is None else {**override, "csrf_token": token}
        refused = alice_dashboard.http.post(f"/dashboard/jobs/{job_id}/overrides", data=data)
        assert refused.status_code == 403 and "security token" in refused.text, token
    for path in (f"/dashboard/jobs/{job_id}/derive", "/dashboard/sign-out", "/dashboard/sign-in"):
        assert alice_dashboard.http.post(path, data={"request_id": "r" * 20}).status_code == 403, path
    assert alice.get(f"/v1/jobs/{job_id}/overrides").json() == []
    assert alice_dashboard.http.get("/dashboard/jobs").status_code == 200  # still signed in

    saved = alice_dashboard.post(f"/dashboard/jobs/{job_id}/overrides", override, token_from=page)
    assert saved.status_code == 303 and saved.headers["location"] == page
    assert [(o["image"], o["class"], o["word"]) for o in alice.get(f"/v1/jobs/{job_id}/overrides").json()] == [
        (image, "square", "box")
    ]


def test_pages_carry_the_csp_and_escape_every_user_string(api, alice, alice_dashboard, dataset_id, job_id):
    review = f"/dashboard/jobs/{job_id}/review"
    saved = alice_dashboard.post(
        f"/dashboard/jobs/{job_id}/overrides",
        {"class": HOSTILE_CLASS, "action": "use", "word": HOSTILE_WORD, "image": HOSTILE_STEM},
        token_from=review,
    )
    assert saved.status_code == 303
    assert alice.get(f"/v1/jobs/{job_id}/overrides").json()[0]["word"] == HOSTILE_WORD
    pages = {
        "/dashboard/datasets": (HOSTILE_DATASET, HOSTILE_CLASS),
        f"/dashboard/datasets/{dataset_id}": (HOSTILE_DATASET, HOSTILE_CLASS, HOSTILE_STEM),
        "/dashboard/jobs": (HOSTILE_DATASET,),
        f"/dashboard/jobs/{job_id}": (HOSTILE_DATASET, HOSTILE_CLASS),
        f"/dashboard/jobs/{job_id}/gallery": (HOSTILE_CLASS, HOSTILE_STEM),
        f"/dashboard/jobs/{job_id}/gallery?class={HOSTILE_CLASS}&sort=iou": (HOSTILE_CLASS, HOSTILE_STEM),
        f"/dashboard/jobs/{job_id}/images/{HOSTILE_STEM}": (HOSTILE_CLASS, HOSTILE_STEM, HOSTILE_WORD),
        review: (HOSTILE_CLASS, HOSTILE_STEM, HOSTILE_WORD),
    }
    for path, shown in pages.items():
        response = alice_dashboard.http.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
        assert_nothing_the_csp_forbids(response.text)
        markup = Markup(response.text)
        assert not any(i.startswith("pwned") for i in markup.ids()), path
        for text in HOSTILE:
            assert text not in response.text, (path, text)
        for text in shown:
            assert text in "".join(markup.text) or any(text in attrs.values() for _, attrs in markup.tags), (path, text)
            assert html.escape(text, quote=False) in response.text or html.escape(text) in response.text, (path, text)
    for picture in ("picture.png", "cams.png", "overlay.png"):
        response = alice_dashboard.http.get(f"/dashboard/jobs/{job_id}/images/{HOSTILE_STEM}/{picture}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png", picture
        assert response.content.startswith(b"\x89PNG")
    static = alice_dashboard.http.get("/dashboard/static/dashboard.js")
    assert static.status_code == 200 and static.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_one_key_never_sees_anothers_data(api, settings, alice_dashboard, dataset_id, job_id):
    bob = DashboardSession(api.url)
    bob.sign_in(new_key(settings, "bob-dashboard"))
    for path in ("/dashboard/datasets", "/dashboard/jobs"):
        page = bob.page(path)
        assert dataset_id not in page and job_id not in page and html.escape(HOSTILE_DATASET) not in page
    job = f"/dashboard/jobs/{job_id}"
    for path in (
        f"/dashboard/datasets/{dataset_id}",
        f"/dashboard/datasets/{dataset_id}/images/img00/thumbnail.png",
        job,
        f"{job}/gallery",
        f"{job}/review",
        f"{job}/images/img00",
        f"{job}/images/img00/picture.png",
        f"{job}/images/img00/overlay.png",
        f"{job}/images/img00/cams.png",
        f"{job}/predictions/anything",
    ):
        response = bob.http.get(path)
        assert response.status_code == 404 and HOSTILE_CLASS not in response.text, path
    assert bob.http.get("/dashboard/jobs/live", params={"id": job_id}).json() == {}
    live = alice_dashboard.http.get("/dashboard/jobs/live", params={"id": job_id}).json()
    assert live[job_id]["state"] == "succeeded"
    for path, data in (
        (f"{job}/overrides", {"class": "square", "action": "use", "word": "box"}),
        (f"{job}/derive", {"request_id": "r" * 20}),
    ):
        assert bob.post(path, data).status_code == 404, path


def test_the_gallery_filters_by_class_and_sorts_by_mask_iou(alice_dashboard, dataset_id, job_id):
    def rows(query: str) -> list[tuple[str, str]]:
        markup = Markup(alice_dashboard.page(f"/dashboard/jobs/{job_id}/gallery{query}"))
        images = [attrs["data-image"] for tag, attrs in markup.tags if tag == "tr" and "data-image" in attrs]
        text = alice_dashboard.page(f"/dashboard/jobs/{job_id}/gallery{query}")
        ious = re.findall(r'<td class="iou">([^<]*)</td>', text)
        return list(zip(images, ious, strict=True))

    every = rows("")
    assert [image for image, _ in every] == ["img00", HOSTILE_STEM, "img02", "img03", "img04", DROPPED]
    squares = rows("?class=SQUARE")
    assert [image for image, _ in squares] == ["img00", "img03", DROPPED]
    worst_first = rows("?sort=iou")
    scored = [float(iou.rstrip("%")) for _, iou in worst_first if iou.endswith("%")]
    assert len(scored) == 5 and scored == sorted(scored)
    assert worst_first[-1] == (DROPPED, "–")  # dropped: no mask, so no score, listed last
    best_first = rows("?sort=-iou")
    assert [float(iou.rstrip("%")) for _, iou in best_first if iou.endswith("%")] == sorted(scored, reverse=True)
    refused = alice_dashboard.http.get(f"/dashboard/jobs/{job_id}/gallery", params={"class": "dogg"})
    assert refused.status_code == 422 and "its classes: square" in refused.text


def test_the_review_page_saves_refuses_and_removes_overrides(alice, alice_dashboard, job_id):
    review = f"/dashboard/jobs/{job_id}/review"

    overrides = f"/dashboard/jobs/{job_id}/overrides"
    alice_dashboard.post(overrides, {"class": "square", "action": "use", "word": "cube"}, token_from=review)
    page = alice_dashboard.page(review)
    assert "Saved: class square uses &#39;cube&#39; (every image)." in page
    assert "Saved" not in alice_dashboard.page(review)  # a flashed message is shown once
    alice_dashboard.post(overrides, {"class": "triangle", "action": "drop", "word": "thing"}, token_from=review)
    assert "thing (dropped)" in alice_dashboard.page(review)
    refused = alice_dashboard.post(
        overrides, {"class": "triangle", "action": "use", "word": "thing"}, token_from=review
    )
    assert refused.headers["location"] == review
    assert "Not saved: &#39;thing&#39; is dropped for class &#39;triangle&#39;" in alice_dashboard.page(review)
    stored = alice.get(f"/v1/jobs/{job_id}/overrides").json()
    assert [(o["class"], o["action"], o["word"], o["image"]) for o in stored] == [
        ("square", "use", "cube", None),
        ("triangle", "drop", "thing", None),
    ]

    removed = alice_dashboard.post(f"{overrides}/{stored[0]['id']}/delete", {}, token_from=review)
    assert removed.status_code == 303
    assert [o["id"] for o in alice.get(f"/v1/jobs/{job_id}/overrides").json()] == [stored[1]["id"]]
    missing = alice_dashboard.post(f"{overrides}/{stored[0]['id']}/delete", {}, token_from=review)
    assert missing.status_code == 404

    # A finished job whose run folder lacks train_cam and select_prompts cannot be derived from: said, not started.
    derive = alice_dashboard.post(f"/dashboard/jobs/{job_id}/derive", {"request_id": "a" * 24}, token_from=review)
    assert derive.headers["location"] == review
    assert "No job started: " in alice_dashboard.page(review)
    assert [j["id"] for j in alice.get("/v1/jobs").json()["items"]] == [job_id]


def test_a_segmenters_scores_and_predictions_are_shown(settings, alice, alice_dashboard, job_id):
    """The job's chart gains the segmenter's bars once eval_seg has scored it, and each prediction run of
    the segmenter has a page with the overlay of every image it labelled (and why the others were not)."""
    record_metrics(settings, job_id)
    add_segmenter(settings, job_id)
    upload_zip = zip_of([("new_a.png", png((40, 30))), ("new_b.png", png((24, 24))), ("broken.png", b"not a png")])
    posted = alice.post(f"/v1/jobs/{job_id}/predictions", files={"file": ("new <i id=pwned-run>.zip", upload_zip)})
    assert posted.status_code == 201, posted.text
    run_queued_tasks(settings)
    run_id = posted.json()["id"]

    page = Markup(alice_dashboard.page(f"/dashboard/jobs/{job_id}"))
    metrics = alice.get(f"/v1/jobs/{job_id}/metrics").json()["stages"]
    bars = [attrs for tag, attrs in page.tags if tag == "rect" and "bar" in attrs.get("class", "")]
    assert {attrs["data-series"] for attrs in bars} == {"CAM", "mask", "segmenter"}
    segmenter = {attrs["data-class"]: float(attrs["width"]) for attrs in bars if attrs["data-series"] == "segmenter"}
    assert segmenter["mIoU"] == pytest.approx(420 * metrics["eval_seg"]["miou"], abs=0.06)
    assert segmenter["triangle"] == pytest.approx(420 * metrics["eval_seg"]["per_class_iou"]["triangle"], abs=0.06)
    links = [attrs["href"] for tag, attrs in page.tags if tag == "a" and "/predictions/" in attrs.get("href", "")]
    assert links == [f"/dashboard/jobs/{job_id}/predictions/{run_id}"]

    text = alice_dashboard.page(links[0])
    assert_nothing_the_csp_forbids(text)
    shown = Markup(text)
    assert "pwned-run" not in shown.ids()
    overlays = [attrs["src"] for tag, attrs in shown.tags if tag == "img"]
    assert overlays == [f"{links[0]}/images/{image}/overlay.png" for image in ("new_a", "new_b")]
    assert "broken.png" in text
    for src in overlays:
        response = alice_dashboard.http.get(src)
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")


def record_metrics(settings, job_id: str) -> None:
    """Scores for each evaluation stage, as the worker records them from the stages' metrics.json."""
    from app.db import create_db_engine, make_sessionmaker, session_scope
    from app.models import Job, StageMetrics

    engine = create_db_engine(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        job = session.get(Job, job_id)
        names = ["background", *job.dataset.classes]
        for offset, stage in enumerate(("eval_cams", "eval_masks", "eval_seg")):
            iou = {name: round(0.1 + 0.05 * (offset + index), 3) for index, name in enumerate(names)}
            miou = sum(iou.values()) / len(iou)
            session.add(StageMetrics(job_id=job_id, stage=stage, miou=miou, per_class_iou=iou, data={"miou": miou}))
    engine.dispose()


def test_image_miou_scores_labels_in_the_truth_or_the_prediction():
    truth = np.array([[0, 1], [1, 255]], np.uint8)
    predicted = np.array([[0, 1], [0, 2]], np.uint8)
    # background: 1 shared pixel of 2; label 1: 1 of 2; label 2 is only where the truth is ignored
    assert image_miou(truth, predicted) == pytest.approx(0.5)
    assert image_miou(truth, np.full((2, 2), 255, np.uint8)) == 0.0
    assert image_miou(truth, np.zeros((3, 3), np.uint8)) is None


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextmanager
def capturing(logger_name: str, handler: logging.Handler) -> Iterator[None]:
    """`handler` on the logger while the block runs (uvicorn's loggers do not propagate to pytest's)."""
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
