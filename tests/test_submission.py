"""The submission writer and checker on plain CSV files (no training): every rejection reason, exactly."""

from __future__ import annotations

import pytest

from pipeline.results.submission import SubmissionError, validate_submission, write_submission

CLASSES = ["01", "10", "NA"]


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.csv"
    path.write_text("id,label,extra\n0007,01,x\n0001,01,y\n0010,01,z\n")
    return path


def _check(tmp_path, sample, text: str) -> list[str]:
    path = tmp_path / "sub.csv"
    path.write_text(text)
    return validate_submission(path, sample, "id", "label", CLASSES)


def test_written_submission_keeps_the_samples_text_columns_and_order_and_validates(tmp_path, sample):
    out = tmp_path / "sub.csv"
    write_submission(sample, "id", "label", ["0007", "0001", "0010"], ["NA", "10", "01"], out)
    assert out.read_text() == "id,label,extra\n0007,NA,x\n0001,10,y\n0010,01,z\n"
    assert validate_submission(out, sample, "id", "label", CLASSES) == []


@pytest.mark.parametrize("ids", [["0007", "0001"], ["7", "1", "10"], ["0001", "0007", "0010"]],
                         ids=["fewer rows", "ids without their zeros", "another order"])
def test_predictions_of_other_ids_are_refused_and_nothing_is_written(tmp_path, sample, ids):
    out = tmp_path / "sub.csv"
    with pytest.raises(SubmissionError, match="do not cover the ids of .*sample.csv row for row"):
        write_submission(sample, "id", "label", ids, ["01"] * len(ids), out)
    assert not out.exists()


def test_missing_files_are_named_as_submission_or_sample(tmp_path, sample):
    gone = tmp_path / "gone.csv"
    assert validate_submission(gone, sample, "id", "label") == [f"submission {gone} does not exist"]
    path = tmp_path / "sub.csv"
    path.write_text("id,label,extra\n")
    assert validate_submission(path, gone, "id", "label") == [f"sample submission {gone} does not exist"]


def test_an_unreadable_csv_gets_the_first_line_of_the_parsers_reason(tmp_path, sample):
    assert _check(tmp_path, sample, "") == ["not a readable CSV: No columns to parse from file"]
    found = _check(tmp_path, sample, 'id,label,extra\n0007,"01,x\n')
    assert len(found) == 1 and found[0].startswith("not a readable CSV: Error tokenizing data")
    assert "\n" not in found[0]


def test_each_rejection_reason_is_found_with_its_line(tmp_path, sample):
    assert _check(tmp_path, sample, "label,id,extra\n01,0007,x\n01,0001,y\n01,0010,z\n") == [
        "columns ['label', 'id', 'extra'] differ from the sample's ['id', 'label', 'extra'] "
        "(names and order must match)"]
    assert _check(tmp_path, sample, "id,label,extra\n0007,01,x\n0001,01,y\n") == [
        "2 rows, the sample has 3", "1 id(s) of the sample are missing, e.g. ['0010']"]
    assert _check(tmp_path, sample, "id,label,extra\n0007,01,x\n0007,01,y\n0010,01,z\n") == [
        "1 duplicate id(s), e.g. '0007' (line 3)", "1 id(s) of the sample are missing, e.g. ['0001']"]
    assert _check(tmp_path, sample, "id,label,extra\n0007,01,x\n1,01,y\n0010,01,z\n") == [
        "1 id(s) of the sample are missing, e.g. ['0001']", "1 id(s) are not in the sample, e.g. ['1']"]
    assert _check(tmp_path, sample, "id,label,extra\n0007,01,x\n0010,01,z\n0001,01,y\n") == [
        "ids are in another order than the sample's (first difference at line 3); keep the sample's order"]
    assert _check(tmp_path, sample, "id,label,extra\n0007,01,x\n0001, ,y\n0010,,z\n") == [
        "2 blank value(s) in 'label' (first at line 3)"]
    assert _check(tmp_path, sample, "id,label,extra\n0007,1,x\n0001,None,y\n0010,NA,z\n") == [
        "2 label(s) not among the training classes, e.g. ['1', 'None']; allowed: ['01', '10', 'NA']"]


def test_ids_and_labels_are_compared_without_surrounding_spaces(tmp_path, sample):
    assert _check(tmp_path, sample, "id,label,extra\n 0007,01 ,x\n0001, 10,y\n0010,NA,z\n") == []


def test_without_classes_any_label_passes(tmp_path, sample):
    path = tmp_path / "sub.csv"
    path.write_text("id,label,extra\n0007,cat,x\n0001,dog,y\n0010,01,z\n")
    assert validate_submission(path, sample, "id", "label") == []


def test_an_extra_row_is_reported_without_an_order_check(tmp_path, sample):
    assert _check(tmp_path, sample, "id,label,extra\n0007,01,x\n0001,01,y\n0010,01,z\n0011,01,w\n") == [
        "4 rows, the sample has 3", "1 id(s) are not in the sample, e.g. ['0011']"]
