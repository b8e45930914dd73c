"""The training child's side of a pruning verdict: it waits for the worker's answer after a
judged epoch, over a real pipe, and a stop request ends the wait."""

import os
import threading
from multiprocessing import Pipe

from service.ml.child import StopFlags, Verdicts
from service.ml.messages import Exit, Verdict
from service.worker.trainer_process import TrainerProcess


def verdicts(from_epoch: int | None):
    worker, child = Pipe()
    stop_now, stop_after_epoch = threading.Event(), threading.Event()
    flags = StopFlags(stop_now, stop_after_epoch, os.getppid())
    return worker, Verdicts(child, flags, from_epoch), stop_now


def test_epochs_before_the_first_judged_one_are_not_waited_on():
    worker, waiting, _ = verdicts(from_epoch=2)
    worker.send(Verdict(stop=True))
    assert waiting.stop_after(1) is False
    # The verdict sent is still there for epoch 2: nothing was read for epoch 1.
    assert waiting.stop_after(2) is True


def test_a_run_outside_a_pruning_study_never_waits():
    _, waiting, _ = verdicts(from_epoch=None)
    assert waiting.stop_after(1) is False and waiting.stop_after(5) is False


def test_each_judged_epoch_gets_its_own_answer_in_order():
    worker, waiting, _ = verdicts(from_epoch=1)
    worker.send(Verdict(stop=False))
    worker.send(Verdict(stop=True))
    assert [waiting.stop_after(1), waiting.stop_after(2)] == [False, True]


def test_the_wait_holds_the_epoch_until_the_verdict_comes():
    worker, waiting, _ = verdicts(from_epoch=1)
    answered: list[bool] = []
    thread = threading.Thread(target=lambda: answered.append(waiting.stop_after(1)))
    thread.start()
    thread.join(0.3)
    assert thread.is_alive() and answered == []
    worker.send(Verdict(stop=True))
    thread.join(5)
    assert answered == [True]


def test_a_stop_request_ends_the_wait_without_a_verdict():
    _, waiting, stop_now = verdicts(from_epoch=1)
    stop_now.set()
    assert waiting.stop_after(1) is True


def test_a_vanished_worker_or_a_stray_message_ends_the_wait_as_a_stop():
    worker, waiting, _ = verdicts(from_epoch=1)
    worker.send(Exit())
    assert waiting.stop_after(1) is True
    worker.close()
    assert waiting.stop_after(2) is True


def test_a_verdict_for_a_child_that_died_meanwhile_is_not_an_error():
    """The next poll reports the crash; the worker must not die of the broken pipe first."""
    trainer = TrainerProcess.__new__(TrainerProcess)  # Its pipe alone, without a child.
    trainer._connection, child = Pipe()
    child.close()
    trainer.send_verdict(stop=True)
