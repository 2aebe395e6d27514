"""A person uses the dashboard in a real headless Chromium, on a real run: the API over HTTP, a `pole worker`
process running the pipeline on a small dataset whose class and file names carry HTML and script.

They sign in, watch the job's live state reach `succeeded`, open the job (IoU chart, radar of words), the
gallery (CAM heat maps and mask overlays), an image's page and the review page, override words three ways
(one image's word, one word for a whole class, a candidate dropped) and start the derived job, which is
watched to its end and whose chosen words must be exactly what the overrides say. Nothing a user wrote
may run or become markup, no page may break its own Content-Security-Policy, and the key never appears
in a URL. Screenshots of the main pages go to $POLE_DASHBOARD_SCREENSHOTS, else to the test's tmp_path;
the folder is printed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.app.conftest import new_key
from tests.app.service import FAST_CONFIG, ApiServer, WorkerProcess, make_dataset_zip, upload
from tests.app.test_dashboard import HOSTILE_CLASS, HOSTILE_DATASET, HOSTILE_STEM, hostile_dataset
from tests.browser import console_errors, headless_chromium, install_chromium

SYNONYMS = {"square": ["box", "block"], HOSTILE_CLASS: ["ring", "disc"], "triangle": ["wedge", "pyramid"]}
IMAGE_OVERRIDE = ("img03", HOSTILE_CLASS, "disc")  # one image's word
CLASS_OVERRIDE = ("square", "block")  # one word for every image of the class
DROP_CLASS = "triangle"  # its most chosen word is dropped
JOB_TIMEOUT_S = 240
FINAL_STATES = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    return install_chromium()


@pytest.fixture
def screenshots(tmp_path, capsys) -> Path:
    folder = Path(os.environ.get("POLE_DASHBOARD_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\ndashboard screenshots: {folder}")
    return folder


class Person:
    """What a person does in the browser, with the checks every page must pass."""

    def __init__(self, driver, base_url: str, key: str, screenshots: Path):
        self.driver, self.base_url, self.key, self.screenshots = driver, base_url, key, screenshots
        self.shots = 0

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)
        self.check_page()

    def find(self, selector: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def find_all(self, selector: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def wait(self, condition, timeout: float = 30, what: str = ""):
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.25).until(lambda _driver: condition(), message=what)

    def check_page(self) -> None:
        """No injected element, no console error (a CSP violation is one), the key in no URL it loaded."""
        assert self.driver.execute_script("return document.querySelectorAll('[id^=pwned]').length") == 0
        self.wait(
            lambda: self.driver.execute_script(
                "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
            ),
            what="the page and its images to load",
        )
        broken = self.driver.execute_script(
            "return Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)"
        )
        assert broken == []
        assert console_errors(self.driver) == []
        loaded = self.driver.execute_script("return performance.getEntries().map(e => e.name).concat([location.href])")
        assert not any(self.key in url for url in loaded)

    def screenshot(self, name: str) -> None:
        self.shots += 1
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1280, min(max(height, 800), 4000))
        assert self.driver.save_screenshot(str(self.screenshots / f"{self.shots:02d}_{name}.png"))
        self.driver.set_window_size(1280, 1100)

    def submit(self, form, **fields: str) -> None:
        """Fill in the form (an element, or a selector of one) and send it as a person would."""
        form = self.find(form) if isinstance(form, str) else form
        for name, value in fields.items():
            field = form.find_element("css selector", f"[name='{name}']")
            field.clear()
            field.send_keys(value)
        form.find_element("css selector", "button[type=submit]").click()
        self.wait(lambda: self.driver.execute_script("return document.readyState") == "complete")
        self.check_page()

    def section(self, selector: str, name: str):
        """The section of class `name` among those `selector` finds."""
        return next(s for s in self.find_all(selector) if s.get_attribute("data-class") == name)

    def live_state(self, job_id: str) -> str:
        return self.find(f"[data-job-id='{job_id}'] [data-field=state]").text

    def watch_until_done(self, job_id: str, *, reloads: bool) -> list[str]:
        """The states the page showed, read as its script updated them; fails if it never ends."""
        self.driver.execute_script("window.sameDocument = true")
        seen: list[str] = []
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                state = self.live_state(job_id)
            except Exception:  # the page reloading under us
                time.sleep(0.2)
                continue
            if not seen or seen[-1] != state:
                seen.append(state)
            if state in FINAL_STATES:
                break
            time.sleep(0.2)
        assert seen and seen[-1] == "succeeded", seen
        same_document = self.driver.execute_script("return window.sameDocument === true")
        assert same_document != reloads, "the job's page reloads once, to show results; lists update in place"
        return seen


def test_a_person_reviews_a_real_run_and_its_derived_job_follows_the_overrides(
    chromium, settings, tmp_path, screenshots
):
    dataset_zip = make_dataset_zip(hostile_dataset(tmp_path / "hostile"), tmp_path / HOSTILE_DATASET)
    with ApiServer(settings) as api:
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            key = new_key(settings, "erin")
            with api.client(key) as rest, headless_chromium(*chromium, tmp_path / "chromedriver.log") as driver:
                dataset = upload(rest, dataset_zip).json()
                body = {"dataset_id": dataset["id"], "preset": "cpu-small", "config": FAST_CONFIG, "synonyms": SYNONYMS}
                created = rest.post("/v1/jobs", json=body)
                assert created.status_code == 201, created.text
                job_id = created.json()["id"]
                person = Person(driver, api.url, key, screenshots)
                _sign_in(person)
                _watch_the_job(person, job_id)
                _see_the_results(person, rest, job_id)
                derived_id, dropped = _override_and_derive(person, rest, job_id)
                _check_the_derived_words(person, rest, job_id, derived_id, dropped)
        finally:
            worker.stop()


def _sign_in(person: Person) -> None:
    person.open("/dashboard/jobs")
    assert person.driver.current_url == person.base_url + "/dashboard/sign-in"
    person.screenshot("sign_in")
    person.submit("form.sign-in", api_key=person.key)
    assert person.driver.current_url == person.base_url + "/dashboard/jobs"
    cookies = {c["name"]: c for c in person.driver.get_cookies()}
    assert cookies["pole_dashboard"]["httpOnly"] and cookies["pole_dashboard"]["sameSite"] == "Strict"
    assert person.driver.execute_script("return document.cookie") == ""  # HttpOnly: out of scripts' reach


def _watch_the_job(person: Person, job_id: str) -> None:
    assert person.live_state(job_id) in ("queued", "running")
    person.screenshot("jobs_running")
    seen = person.watch_until_done(job_id, reloads=False)
    assert len(seen) >= 2, seen  # an active state, then succeeded, shown without reloading the list
    person.check_page()
    person.screenshot("jobs_done")


def _see_the_results(person: Person, rest, job_id: str) -> None:
    person.find(f"a[href='/dashboard/jobs/{job_id}']").click()
    person.check_page()
    metrics = rest.get(f"/v1/jobs/{job_id}/metrics").json()["stages"]
    bars = person.find_all("svg.chart rect.bar")
    classes = ["background", "square", HOSTILE_CLASS, "triangle"]
    assert len(bars) == 2 * (1 + len(classes))  # CAM and mask, for mIoU and each class
    for bar in bars:
        stage = {"CAM": "eval_cams", "mask": "eval_masks"}[bar.get_attribute("data-series")]
        name = bar.get_attribute("data-class")
        value = metrics[stage]["miou"] if name == "mIoU" else metrics[stage]["per_class_iou"][name]
        title = bar.find_element("css selector", "title").get_attribute("textContent")
        assert title.endswith(f"{value:.1%}" if value is not None else "–"), (title, value)
        assert float(bar.get_attribute("width")) == pytest.approx(420 * (value or 0), abs=0.06)
    radars = {figure.get_attribute("data-class") for figure in person.find_all("figure.radar")}
    assert radars == set(SYNONYMS)
    person.screenshot("job")

    person.open(f"/dashboard/jobs/{job_id}/gallery")
    assert len(person.find_all("#gallery img.cams")) == len(person.find_all("#gallery img.overlay")) == 6
    person.submit("form.filters")  # every class, upload order: the defaults
    select = person.find("form.filters select[name=class]")
    select.find_element("css selector", "option:nth-child(3)").click()  # the hostile class
    person.find("form.filters select[name=sort] option[value=iou]").click()
    person.find("form.filters button").click()
    person.check_page()
    shown = [row.get_attribute("data-image") for row in person.find_all("#gallery tr[data-image]")]
    assert shown and all(HOSTILE_CLASS in _tags(rest, job_id, image) for image in shown)
    ious = [float(cell.text.rstrip("%")) for cell in person.find_all("#gallery td.iou") if cell.text.endswith("%")]
    assert ious == sorted(ious) and len(ious) == len(shown)
    person.screenshot("gallery")
    person.open(f"/dashboard/jobs/{job_id}/images/{quote(HOSTILE_STEM, safe='')}")
    assert person.find("h1 .name").text == HOSTILE_STEM


def _override_and_derive(person: Person, rest, job_id: str) -> tuple[str, str]:
    """Make the three kinds of override and start the derived job; returns its id and the word dropped."""
    image, name, word = IMAGE_OVERRIDE
    person.open(f"/dashboard/jobs/{job_id}/images/{image}")
    person.screenshot("image")
    person.submit(person.section("section.class-words", name).find_element("css selector", "form.override"), word=word)
    assert "Saved" in person.find("p.flash").text

    person.open(f"/dashboard/jobs/{job_id}/review")
    name, word = CLASS_OVERRIDE
    person.submit(
        person.section("section.review-class", name).find_element("css selector", "form.use-for-class"), word=word
    )
    assert "Saved" in person.find("p.flash").text
    name = DROP_CLASS
    word = (
        person.section("section.review-class", name)
        .find_element("css selector", "tr[data-word]")
        .get_attribute("data-word")
    )
    drops = person.section("section.review-class", name).find_elements("css selector", "form.drop")
    person.submit(
        next(f for f in drops if f.find_element("css selector", "[name=word]").get_attribute("value") == word)
    )
    assert "Saved" in person.find("p.flash").text
    assert (
        person.section("section.review-class", name).find_element("css selector", ".dropped").text
        == f"{word} (dropped)"
    )
    assert len(person.find_all("#overrides tbody tr")) == 3
    person.screenshot("review")

    person.find("#start-derived").click()
    person.check_page()
    derived_id = person.driver.current_url.rsplit("/", 1)[1]
    assert derived_id != job_id and rest.get(f"/v1/jobs/{derived_id}").json()["parent_id"] == job_id
    person.watch_until_done(derived_id, reloads=True)
    person.check_page()
    assert person.find_all("svg.chart rect.bar")  # the reloaded page shows the derived job's scores
    person.screenshot("derived_job")
    return derived_id, word


def _check_the_derived_words(person: Person, rest, job_id: str, derived_id: str, dropped: str) -> None:
    parent = {(s["image"], s["class"]): s for s in _selections(rest, job_id)}
    derived = {(s["image"], s["class"]): s for s in _selections(rest, derived_id)}
    assert set(derived) == set(parent)
    for (image, name), selection in parent.items():
        expected = selection["chosen"]
        if name == DROP_CLASS and expected == dropped:
            remaining = [(score, w) for w, score in zip(selection["candidates"], selection["scores"], strict=True)]
            expected = max(pair for pair in remaining if pair[1] != dropped)[1]
        if name == CLASS_OVERRIDE[0]:
            expected = CLASS_OVERRIDE[1]
        if (image, name) == IMAGE_OVERRIDE[:2]:
            expected = IMAGE_OVERRIDE[2]
        overridden = name == CLASS_OVERRIDE[0] or (image, name) == IMAGE_OVERRIDE[:2] or expected != selection["chosen"]
        assert (derived[(image, name)]["chosen"], derived[(image, name)]["overridden"]) == (expected, overridden), (
            image,
            name,
        )
    person.open(f"/dashboard/jobs/{derived_id}/gallery?class={CLASS_OVERRIDE[0]}")
    words = [item.text for item in person.find_all("#gallery li[data-class='square']")]
    assert words and all(text == f"square {CLASS_OVERRIDE[1]} (set by a person)" for text in words), words
    person.screenshot("derived_gallery")


def _selections(rest, job_id: str) -> list[dict]:
    response = rest.get(f"/v1/jobs/{job_id}/selections", params={"limit": 500})
    assert response.status_code == 200 and response.json()["next_cursor"] is None, response.text
    return response.json()["items"]


def _tags(rest, job_id: str, image: str) -> list[str]:
    return rest.get(f"/v1/jobs/{job_id}/images/{image}").json()["tags"]
