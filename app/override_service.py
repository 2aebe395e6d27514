"""Reviewing the [CLS] words a job chose: the share of each word per class, and the overrides a person
makes on them (stored on the reviewed job; a derived job applies them, see ml.spec.overrides)."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.errors import ApiError
from app.models import Image, Job, Selection, WordOverride
from app.result_service import dataset_class
from app.schemas import ClassWordsOut, OverrideIn, OverrideOut, WordShareOut, WordSummaryOut
from app.settings import Settings
from ml.spec.overrides import word_problem

EXAMPLES_PER_WORD = 4


def list_overrides(session: Session, job: Job) -> list[WordOverride]:
    """The job's overrides, oldest first: the order a derived job applies them in."""
    return list(session.scalars(select(WordOverride).where(WordOverride.job_id == job.id).order_by(WordOverride.pk)))


def add_override(session: Session, settings: Settings, job: Job, body: OverrideIn) -> WordOverride:
    """Validate and store one override of `job`'s words; a newer `use` on the same target (one image's
    class, or a whole class) replaces the older one, and a repeated `drop` returns the stored one."""
    override = store_override(session, checked_override(session, job, body))
    session.commit()
    return override


def store_override(session: Session, override: WordOverride) -> WordOverride:
    """Add a checked override to the session (not committed): it replaces an older `use` on the same
    target; a `drop` already stored is returned instead."""
    if override.action == "drop":
        stored = _same_drop(session, override)
        if stored is not None:
            return stored
    else:
        image = override.image_id
        same_target = WordOverride.image_id.is_(None) if image is None else WordOverride.image_id == image
        session.execute(
            delete(WordOverride).where(
                WordOverride.job_id == override.job_id,
                WordOverride.class_name == override.class_name,
                WordOverride.action == "use",
                same_target,
            )
        )
    session.add(override)
    session.flush()
    return override


def checked_override(session: Session, job: Job, body: OverrideIn) -> WordOverride:
    """The override `body` asks for, with its class and word spelled as the job spells them, or an
    ApiError saying what to fix. Not stored."""
    _require_selections(session, job)
    name = dataset_class(job, body.class_name)
    candidates = class_candidates(session, job, name)
    word = body.word.strip()
    problem = word_problem(word)
    if problem:
        raise ApiError(422, f"word {body.word[:70]!r}: {problem}; give a plain class word such as {candidates[0]!r}")
    known = {c.casefold(): c for c in candidates}
    word = known.get(word.casefold(), word)
    if body.image is not None:
        _require_image_with_class(session, job, body.image, name)
    overrides = [o for o in list_overrides(session, job) if o.class_name == name]
    dropped = {o.word.casefold(): o for o in overrides if o.action == "drop"}
    if body.action == "drop":
        if body.image is not None:
            raise ApiError(
                422, "`drop` applies to a whole class: leave `image` out, or `use` another word for that image"
            )
        if word.casefold() not in known:
            raise ApiError(
                422, f"{word!r} is not a candidate of class {name!r}; its candidates: {', '.join(candidates)}"
            )
        used = [o for o in overrides if o.action == "use" and o.word.casefold() == word.casefold()]
        if used:
            raise ApiError(
                409,
                f"override {used[0].pk} uses {word!r} for class {name!r}; delete it "
                f"(DELETE /v1/jobs/{job.id}/overrides/{used[0].pk}) before dropping the word",
            )
        if word.casefold() not in dropped and len(dropped) + 1 >= len(candidates):
            raise ApiError(
                409,
                f"dropping {word!r} would leave class {name!r} no candidate; keep one, or `use` a word for the class",
            )
    elif word.casefold() in dropped:
        raise ApiError(
            409,
            f"{word!r} is dropped for class {name!r} (override {dropped[word.casefold()].pk}); delete that "
            f"override (DELETE /v1/jobs/{job.id}/overrides/{dropped[word.casefold()].pk}) to use the word again",
        )
    return WordOverride(job_id=job.id, image_id=body.image, class_name=name, action=body.action, word=word)


def remove_override(session: Session, job: Job, override_pk: int) -> None:
    override = session.scalar(select(WordOverride).where(WordOverride.pk == override_pk, WordOverride.job_id == job.id))
    if override is None:
        raise ApiError(404, f"no override {override_pk} of this job; GET /v1/jobs/{job.id}/overrides lists them")
    session.delete(override)
    session.commit()


def override_out(override: WordOverride) -> OverrideOut:
    return OverrideOut(
        id=override.pk,
        job_id=override.job_id,
        image=override.image_id,
        class_name=override.class_name,
        action=override.action,
        word=override.word,
        created_at=override.created_at,
    )


def override_record(override: WordOverride) -> dict:
    """The override as ml.spec.overrides reads it, and as a derived job's config records it."""
    return {"image": override.image_id, "class": override.class_name, "action": override.action, "word": override.word}


def word_summary(session: Session, job: Job, examples: int = EXAMPLES_PER_WORD) -> WordSummaryOut:
    """Per class: each chosen word with how many images got it, their share, and up to `examples` of them."""
    _require_selections(session, job)
    counts = session.execute(
        select(Selection.class_name, Selection.chosen, func.count())
        .where(Selection.job_id == job.id)
        .group_by(Selection.class_name, Selection.chosen)
    ).all()
    # The first images (in upload order) of each (class, word), in one query: numbered within their group.
    rank = func.row_number().over(partition_by=(Selection.class_name, Selection.chosen), order_by=Selection.pk)
    numbered = (
        select(Selection.class_name, Selection.chosen, Selection.image_id, rank.label("rank"))
        .where(Selection.job_id == job.id)
        .subquery()
    )
    shown: dict[tuple[str, str], list[str]] = {}
    for name, word, image_id, _ in session.execute(
        select(numbered).where(numbered.c.rank <= examples).order_by(numbered.c.rank)
    ):
        shown.setdefault((name, word), []).append(image_id)
    per_class: dict[str, list[tuple[str, int]]] = {}
    for name, word, count in counts:
        per_class.setdefault(name, []).append((word, count))
    classes = []
    for name in job.dataset.classes:
        if name not in per_class:
            continue
        total = sum(count for _, count in per_class[name])
        words = sorted(per_class[name], key=lambda pair: (-pair[1], pair[0]))
        classes.append(
            ClassWordsOut(
                class_name=name,
                images=total,
                candidates=class_candidates(session, job, name),
                words=[
                    WordShareOut(word=word, count=count, share=count / total, examples=shown.get((name, word), []))
                    for word, count in words
                ],
            )
        )
    overrides = [override_out(o) for o in list_overrides(session, job)]
    return WordSummaryOut(job_id=job.id, classes=classes, overrides=overrides)


def class_candidates(session: Session, job: Job, name: str) -> list[str]:
    """The words select_prompts chose among for class `name` (the same list for every image of it)."""
    candidates = session.scalar(
        select(Selection.candidates)
        .where(Selection.job_id == job.id, Selection.class_name == name)
        .order_by(Selection.pk)
        .limit(1)
    )
    if candidates is None:
        raise ApiError(409, f"this job chose no word for class {name!r}: none of its images kept that tag")
    return list(candidates)


def _require_selections(session: Session, job: Job) -> None:
    if session.scalar(select(Selection.pk).where(Selection.job_id == job.id).limit(1)) is None:
        raise ApiError(
            409,
            f"job is {job.state} and has no chosen words yet: they are reviewed once select_prompts has "
            f"finished and the job has recorded them (GET /v1/jobs/{job.id})",
        )


def _require_image_with_class(session: Session, job: Job, image_id: str, name: str) -> None:
    image = session.scalar(select(Image).where(Image.dataset_id == job.dataset_id, Image.image_id == image_id))
    if image is None:
        raise ApiError(404, f"no image {image_id[:70]!r} in this job's dataset; GET /v1/jobs/{job.id}/images")
    if name not in image.tags:
        raise ApiError(
            422, f"image {image_id!r} is not tagged {name!r} (its tags: {', '.join(image.tags)}); pick one of those"
        )
    chosen = session.scalar(
        select(Selection.pk).where(
            Selection.job_id == job.id, Selection.image_id == image_id, Selection.class_name == name
        )
    )
    if chosen is None:
        reason = (job.failed_images or {}).get(image_id, "no word was recorded for it")
        raise ApiError(409, f"the job dropped image {image_id!r} ({reason}); there is no word of it to override")


def _same_drop(session: Session, override: WordOverride) -> WordOverride | None:
    return session.scalar(
        select(WordOverride).where(
            WordOverride.job_id == override.job_id,
            WordOverride.class_name == override.class_name,
            WordOverride.action == "drop",
            WordOverride.word == override.word,
        )
    )
