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
            "base": {**BASE, "epochs": 3, "train_samples": 1000},
            # A learning rate 10,000 times smaller barely moves from chance in three epochs.
            "variants": [{"learning_rate": 0.003}, {"learning_rate": 3e-7}],
            "repeats": 2,
            "prune": {"rule": "median", "metric": "accuracy", "after_epoch": 1},
        },
    ).json()
    drain()
    items = client.get(f"/experiments?study_id={study['id']}").json()["items"]
    bodies = [client.get(f"/experiments/{item['id']}").json() for item in items]
    best = [b for b in bodies if b["study"]["variant"] == {"learning_rate": 0.003}]
    worse = [b for b in bodies if b["study"]["variant"] == {"learning_rate": 3e-7}]
    assert [b["status"] for b in best] == ["succeeded"] * 2
    assert [b["status"] for b in worse] == ["pruned"] * 2
    for body in worse:
        # Stopped after its first epoch, which is all it kept; no test result, no model.
        assert len(body["epochs"]) == 1 and body["test"] is None and body["model"] is None
        assert "below" in body["stop_reason"] and "median stopping rule" in body["stop_reason"]
        assert body["attempts"][-1]["outcome"] == "pruned"
    read = client.get(f"/studies/{study['id']}").json()
    assert read["status"] == "finished"
    assert read["counts"]["pruned"] == 2 and read["counts"]["succeeded"] == 2


def test_the_rule_waits_for_after_epoch_and_min_finished(client, drain, session_factory):
    """Unit-level: the same rows give different verdicts as the rule's thresholds move."""
    body = {
        "name": "thresholds",
        "base": {**BASE, "epochs": 2},
        "variants": [{"filters": 8}, {"filters": 4}],
        "prune": {"metric": "accuracy", "after_epoch": 2, "min_finished": 1},
    }
    study = client.post("/studies", json=body).json()
    first, second = (
        item["id"]
        for item in sorted(
            client.get(f"/experiments?study_id={study['id']}").json()["items"],
            key=lambda item: item["id"],
        )
    )
    client.post(f"/experiments/{second}/cancel")
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
        assert prune_reason(session, first, epoch(2, 0.0)) is None
