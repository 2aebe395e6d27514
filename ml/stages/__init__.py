"""One module per pipeline stage, each exposing `run(ctx: StageContext) -> None`.

Their order, config sections and when each runs are in ml.spec.registry.STAGES; what each writes,
and where, in ml.spec.layout. Every stage also writes stage.json (seed, config section, weight and
checkpoint hashes). Stages share code through the modules below them (ml.models, ml.loaders,
ml.training, ...), never by importing each other.
"""
