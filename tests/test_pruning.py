"""The median stopping rule through a real worker: a clearly worse variant stops early as
`pruned`; the best variant never does."""

from service.results import EpochResult
from service.studies.pruning import prune_reason
from tests.conftest import TINY_SPEC

BASE = {key: value for key, value in TINY_SPEC.items() if key != "seed"}


def test_a_clearly_worse_variant_is_pruned_and_the_best_never_is(client, drain):
    study = client.post(
        "/studies",
        json={
            "name": "pruned",
            "base": {**BASE, "epochs": 2, "train_samples": 640},
            # A learning rate 10,000 times smaller barely moves from chance in two epochs.
            "variants": [{"learning_rate": 0.003}, {"learning_rate": 3e-7}],
            "repeats": 3,
            "prune": {"rule": "median", "metric": "accuracy", "after_epoch": 1, "min_finished": 1},
        },
    ).json()
    drain()
    items = client.get(f"/experiments?study_id={study['id']}").json()["items"]
    # Oldest first: the order the cells were queued and run in.
    bodies = [client.get(f"/experiments/{item['id']}").json() for item in reversed(items)]
    best = [b for b in bodies if b["study"]["variant"] == {"learning_rate": 0.003}]
    worse = [b for b in bodies if b["study"]["variant"] == {"learning_rate": 3e-7}]
    assert [b["status"] for b in best] == ["succeeded"] * 3
    # Each variant's first repeat runs whole, to be judged by; the later ones are pruned.
    assert [b["status"] for b in worse] == ["succeeded", "pruned", "pruned"]
    for body in worse[1:]:
        # Stopped after its first epoch, which is all it kept; no test result, no model.
        assert len(body["epochs"]) == 1 and body["test"] is None and body["model"] is None
        assert "below" in body["stop_reason"] and "median stopping rule" in body["stop_reason"]
        assert body["attempts"][-1]["outcome"] == "pruned"
    read = client.get(f"/studies/{study['id']}").json()
    assert read["status"] == "finished"
    assert read["counts"]["pruned"] == 2 and read["counts"]["succeeded"] == 4
    worse_summary = next(v for v in read["variants"] if v["params"] == {"learning_rate": 3e-7})
    assert (worse_summary["runs"], worse_summary["pruned"]) == (1, 2)


def test_the_rule_waits_for_after_epoch_and_min_finished(client, drain, session_factory):
    """Unit-level: the same rows give different verdicts as the rule's thresholds move."""
    body = {
        "name": "thresholds",
        "base": {**BASE, "epochs": 2},
        "variants": [{"filters": 8}, {"filters": 4}],
        "repeats": 2,
        "prune": {"metric": "accuracy", "after_epoch": 2, "min_finished": 1},
    }
    study = client.post("/studies", json=body).json()
    # Repeat by repeat: 8 filters and 4, then again; only the first is trained.
    first, first_of_four, again, second = sorted(
        item["id"] for item in client.get(f"/experiments?study_id={study['id']}").json()["items"]
    )
    for cancelled in (first_of_four, again, second):
        client.post(f"/experiments/{cancelled}/cancel")
    drain()
    finished = client.get(f"/experiments/{first}").json()
    at_two = finished["epochs"][1]["accuracy"]

    def epoch(number: int, accuracy: float) -> EpochResult:
        return EpochResult(number, 1.0, accuracy, None, None, 1.0, 1.0)

    with session_factory() as session:
        # Below the median of the one other variant's succeeded run, at epoch 2: prune.
        assert "below" in prune_reason(session, second, epoch(2, at_two - 0.01))
        assert prune_reason(session, second, epoch(2, at_two)) is None
        # Before after_epoch, nothing is pruned however bad.
        assert prune_reason(session, second, epoch(1, 0.0)) is None
        # The finished run's own variant is no evidence against it.
        assert prune_reason(session, again, epoch(2, 0.0)) is None
        # A variant's first repeat always runs whole.
        assert prune_reason(session, first_of_four, epoch(2, 0.0)) is None
