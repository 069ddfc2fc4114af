
import numpy as np
import pandas as pd
import pytest

from pipeline.data.folds import assign_folds, fold_class_counts, training_indices_for_fold


def _imbalanced_labels(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(["cat", "dog", "fox"], size=n, p=[0.6, 0.3, 0.1])


def _grouped_dataset():
    """60 groups (people) of 4 images each; 40 'maj', 12 'mid', 8 'min' groups."""
    group_label = np.array(["maj"] * 40 + ["mid"] * 12 + ["min"] * 8)
    rng = np.random.default_rng(3)
    group_label = group_label[rng.permutation(60)]
    groups = np.repeat([f"person{g:02d}" for g in range(60)], 4)
    labels = np.repeat(group_label, 4)
    return labels, groups


@pytest.mark.parametrize("n_splits", [2, 5])
def test_every_row_gets_one_fold_and_no_fold_is_empty(n_splits):
    labels = _imbalanced_labels()
    folds = assign_folds(labels, n_splits=n_splits, seed=0)
    assert folds.shape == labels.shape
    assert np.issubdtype(folds.dtype, np.integer)
    assert set(np.unique(folds)) == set(range(n_splits))
    # the validation sets partition the rows
    val_sets = [set(training_indices_for_fold(folds, k)[1]) for k in range(n_splits)]
    assert all(val_sets)
    assert sum(len(v) for v in val_sets) == len(labels)
    assert set().union(*val_sets) == set(range(len(labels)))


def test_stratified_counts_differ_by_at_most_one_across_folds():
    labels = _imbalanced_labels()
    folds = assign_folds(labels, n_splits=5, seed=7)
    table = fold_class_counts(labels, folds)
    per_fold = table.drop(columns="total")
    assert (per_fold.max(axis=1) - per_fold.min(axis=1) <= 1).all()
    # proportions in each fold stay close to the overall ones
    overall = pd.Series(labels).value_counts(normalize=True).sort_index()
    for k in range(5):
        fold_prop = per_fold[f"fold_{k}"] / per_fold[f"fold_{k}"].sum()
        assert np.allclose(fold_prop.to_numpy(), overall.to_numpy(), atol=0.05)


def test_groups_never_span_two_folds_and_proportions_roughly_hold():
    labels, groups = _grouped_dataset()
    folds = assign_folds(labels, n_splits=4, seed=0, groups=groups)
    per_group = pd.DataFrame({"g": groups, "f": folds}).groupby("g")["f"].nunique()
    assert (per_group == 1).all()
    assert set(np.unique(folds)) == set(range(4))
    table = fold_class_counts(labels, folds).drop(columns="total")
    overall = pd.Series(labels).value_counts(normalize=True).sort_index()
    for k in range(4):
        fold_prop = table[f"fold_{k}"] / table[f"fold_{k}"].sum()
        assert np.allclose(fold_prop.to_numpy(), overall.to_numpy(), atol=0.1)
    # every class is present in every fold's validation set
    assert (table > 0).all().all()


def test_same_seed_same_folds_different_seed_different_folds():
    labels = _imbalanced_labels()
    a = assign_folds(labels, 5, seed=1)
    b = assign_folds(labels, 5, seed=1)
    c = assign_folds(labels, 5, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)

    g_labels, groups = _grouped_dataset()
    ga = assign_folds(g_labels, 4, seed=1, groups=groups)
    gb = assign_folds(g_labels, 4, seed=1, groups=groups)
    gc = assign_folds(g_labels, 4, seed=2, groups=groups)
    np.testing.assert_array_equal(ga, gb)
    assert not np.array_equal(ga, gc)


def test_string_and_int_labels_give_same_split():
    strings = _imbalanced_labels()
    ints = pd.Series(strings).map({"cat": 0, "dog": 1, "fox": 2}).to_numpy()
    as_list = list(strings)
    np.testing.assert_array_equal(assign_folds(strings, 3, 0), assign_folds(ints, 3, 0))
    np.testing.assert_array_equal(assign_folds(strings, 3, 0), assign_folds(as_list, 3, 0))
    # pandas object column of ints (as read from a CSV with mixed input) also works
    objects = pd.Series(ints, dtype=object)
    np.testing.assert_array_equal(assign_folds(ints, 3, 0), assign_folds(objects, 3, 0))


def test_small_classes_are_all_named_with_counts():
    labels = ["big"] * 20 + ["tiny"] * 2 + ["small"] * 3
    with pytest.raises(ValueError) as err:
        assign_folds(labels, n_splits=5, seed=0)
    msg = str(err.value)
    assert "'tiny' (2 rows)" in msg and "'small' (3 rows)" in msg
    assert "'big'" not in msg
    assert "at most 2" in msg and "merge or drop" in msg


def test_singleton_class_does_not_suggest_impossible_n_splits():
    with pytest.raises(ValueError, match=r"'rare' \(1 row\)") as err:
        assign_folds(["a"] * 10 + ["rare"], n_splits=3, seed=0)
    assert "at most" not in str(err.value)


def test_class_with_too_few_groups_is_named():
    # 'rare' has 6 rows but only 2 groups: enough rows, too few groups for 3 folds
    labels = ["common"] * 30 + ["rare"] * 6
    groups = [f"c{i}" for i in range(30)] + ["r0"] * 3 + ["r1"] * 3
    with pytest.raises(ValueError, match=r"'rare' \(2 groups\)"):
        assign_folds(labels, n_splits=3, seed=0, groups=groups)
    # without groups the same data is fine
    assign_folds(labels, n_splits=3, seed=0)


def test_group_with_two_labels_is_named():
    labels = ["a", "a", "b", "b", "a", "b"] * 3
    groups = [f"g{i}" for i in range(18)]
    groups[0] = groups[2] = "alice"
    with pytest.raises(ValueError, match="one label per group") as err:
        assign_folds(labels, n_splits=2, seed=0, groups=groups)
    assert "'alice'" in str(err.value) and "['a', 'b']" in str(err.value)


@pytest.mark.parametrize("bad", [None, np.nan, "", "   "])
def test_missing_labels_name_the_rows(bad):
    labels = np.array(["a", "b"] * 5, dtype=object)
    labels[3] = bad
    labels[7] = bad
    with pytest.raises(ValueError, match=r"row index\(es\) \[3, 7\]"):
        assign_folds(labels, n_splits=2, seed=0)


def test_input_checks():
    labels = ["a", "b"] * 5
    with pytest.raises(ValueError, match="at least 2.*n_splits=1"):
        assign_folds(labels, n_splits=1, seed=0)
    with pytest.raises(ValueError, match="same length.*10 labels and 9 groups"):
        assign_folds(labels, n_splits=2, seed=0, groups=list(range(9)))
    with pytest.raises(ValueError, match="empty"):
        assign_folds([], n_splits=2, seed=0)


def test_fold_class_counts_table():
    labels = np.array(["x", "y", "x", "y", "x", "y"])
    folds = np.array([0, 0, 1, 1, 2, 2])
    table = fold_class_counts(labels, folds)
    assert list(table.columns) == ["fold_0", "fold_1", "fold_2", "total"]
    assert list(table.index) == ["x", "y"]
    assert table.to_numpy().tolist() == [[1, 1, 1, 3], [1, 1, 1, 3]]
    assert all(np.issubdtype(t, np.integer) for t in table.dtypes)
    # a fold with no rows of a class shows 0, not NaN
    table = fold_class_counts(["x", "x", "y"], [0, 1, 1])
    assert table.loc["y", "fold_0"] == 0 and table.loc["x", "total"] == 2


def test_training_indices_for_fold():
    folds = np.array([0, 1, 2, 0, 1, 2, 0])
    train, val = training_indices_for_fold(folds, 0)
    assert val.tolist() == [0, 3, 6]
    assert train.tolist() == [1, 2, 4, 5]
    with pytest.raises(ValueError, match=r"0\.\.2.*got 3"):
        training_indices_for_fold(folds, 3)



def test_groups_with_blanks_or_mixed_types_are_refused_naming_the_problem():
    labels = ["a", "b"] * 6
    with pytest.raises(ValueError, match=r"groups has 2 missing or blank value\(s\) at row index\(es\) \[1, 4\]"):
        assign_folds(labels, 2, 0, groups=["g0", None, "g2", "g3", " ", "g5"] + [f"g{i}" for i in range(6, 12)])
    with pytest.raises(ValueError, match=r"groups mixes value types \['int', 'str'\]"):
        assign_folds(labels, 2, 0, groups=np.array([1, "x"] * 6, dtype=object))


@pytest.mark.parametrize("n_mixed, listed_all", [(10, True), (11, False)])
def test_groups_with_two_labels_are_listed_up_to_ten_then_counted(n_mixed, listed_all):
    groups = [f"g{i:02d}" for i in range(n_mixed) for _ in (0, 1)] + [f"h{i}" for i in range(20)]
    labels = ["a", "b"] * n_mixed + ["a", "b"] * 10
    with pytest.raises(ValueError, match=f"{n_mixed} group\\(s\\) carry more than one") as err:
        assign_folds(labels, 2, 0, groups=groups)
    message = str(err.value)
    assert "group 'g00' has labels ['a', 'b']" in message and "group 'g09'" in message
    assert ("groups in all" in message) is not listed_all and "group 'g10' has" not in message


def test_a_fold_number_must_be_a_real_integer_and_a_one_row_fold_is_fine():
    folds = np.array([0, 1, 1, 1])
    train, val = training_indices_for_fold(folds, 0)
    assert val.tolist() == [0] and train.tolist() == [1, 2, 3]
    assert training_indices_for_fold(np.array([0, 0, 0, 1]), 0)[0].tolist() == [3]   # one training row
    for bad in (True, 1.0, "1", 2, -1):
        with pytest.raises(ValueError, match=r"fold must be an integer in 0..1"):
            training_indices_for_fold(folds, bad)


def test_grouped_folds_are_scikit_learns_stratified_group_kfold():
    """group_folds computes StratifiedGroupKFold(shuffle=True)'s folds faster: the same folds, table after table."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    from pipeline.data.group_folds import stratified_group_folds

    rng = np.random.default_rng(0)
    for _ in range(60):
        n_classes, k = int(rng.integers(2, 12)), int(rng.integers(2, 9))
        n_groups = int(rng.integers(k * n_classes, k * n_classes + 150))
        group_label = rng.integers(0, n_classes, size=n_groups)
        group_label[:n_classes * k] = np.repeat(np.arange(n_classes), k)      # every class in k groups
        if rng.random() < 0.5:
            group_label = np.where(rng.random(n_groups) < 0.7, 0, group_label)   # one dominant class
        groups = np.repeat(np.arange(n_groups), rng.integers(1, int(rng.integers(2, 7)), size=n_groups))
        order = rng.permutation(len(groups))
        groups, labels = groups[order], np.array([f"c{c}" for c in group_label[groups[order]]])
        seed = int(rng.integers(0, 1000))
        expected = np.full(len(groups), -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # "the least populated class has only ... members"
            splits = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(labels, labels, groups)
            for fold, (_, val) in enumerate(splits):
                expected[val] = fold
        np.testing.assert_array_equal(stratified_group_folds(labels, groups, k, seed), expected)
