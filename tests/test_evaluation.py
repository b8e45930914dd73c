"""The confusion matrix and per-class results, against counts worked out by hand."""

import numpy as np
import pytest

from service.evaluation import confusion_matrix, misclassified_count, per_class


def test_the_matrix_counts_true_classes_by_row_and_predictions_by_column():
    true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    matrix = confusion_matrix(true, predicted)
    assert matrix[0][:3] == [2, 1, 0]
    assert matrix[1][:3] == [0, 1, 1]
    assert matrix[2][:3] == [0, 0, 1]
    assert sum(map(sum, matrix)) == 6 and len(matrix) == len(matrix[0]) == 10


def test_precision_recall_and_accuracy_one_class_against_the_rest():
    matrix = confusion_matrix(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]))
    t_shirt, trouser, pullover, coat = per_class(matrix)[:4]
    assert (t_shirt.name, t_shirt.precision, t_shirt.recall) == ("T-shirt/top", 1.0, 2 / 3)
    # Class 1: one right, one predicted wrongly as it (a 0), one of its own missed (as a 2).
    assert trouser.precision == pytest.approx(1 / 2) and trouser.recall == pytest.approx(1 / 2)
    # Right about class 1 for 4 of 6 images: 1 true positive and 3 true negatives.
    assert trouser.accuracy == pytest.approx(4 / 6)
    assert pullover.precision == pytest.approx(1 / 2) and pullover.recall == 1.0
    # Never present and never predicted: no precision or recall, every image rightly "not it".
    assert (coat.precision, coat.recall, coat.accuracy) == (None, None, 1.0)


def test_the_misclassified_count_is_everything_off_the_diagonal():
    matrix = confusion_matrix(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]))
    assert misclassified_count(matrix) == 2
