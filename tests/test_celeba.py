import numpy as np
import pytest

from cvae.core.celeba import CELEBA_ATTRIBUTES, load_attributes, read_attribute_frame, read_partition
from cvae.core.errors import CvaeError

# The real file's shape: a count, names with a trailing space, right-aligned values
# (two spaces before a 1), and CRLF line ends in some copies.
REAL_FORMAT = (
    "2\r\n"
    "5_o_Clock_Shadow Arched_Eyebrows Attractive \r\n"
    "000001.jpg -1  1  1\r\n"
    "000002.jpg -1 -1  1\r\n"
)


def test_strict_reader_parses_the_real_format(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_bytes(REAL_FORMAT.encode())
    attributes = load_attributes(path)
    assert attributes.names == ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive"]
    assert attributes.image_ids == ["000001.jpg", "000002.jpg"]
    np.testing.assert_array_equal(attributes.values, [[-1, 1, 1], [-1, -1, 1]])
    assert attributes.values.dtype == np.int8


def test_any_attribute_names_and_count(tmp_path):
    path = tmp_path / "attrs.txt"
    path.write_text("1\nHas_Wings Is_Red\na.png 1 -1\n")
    attributes = load_attributes(path)
    assert attributes.names == ["Has_Wings", "Is_Red"]
    np.testing.assert_array_equal(attributes.values, [[1, -1]])


def test_lenient_reader_keeps_defects_for_validation(tmp_path):
    path = tmp_path / "attrs.txt"
    path.write_text("3\nA B \nx.jpg 1\ny.jpg 1 oops\nz.jpg 1 -1 1\n")
    table = read_attribute_frame(path)
    assert table.declared_count == "3"
    assert list(table.frame.columns) == ["image_id", "A", "B", "extra_value_1"]
    assert table.frame["B"].tolist() == [None, "oops", -1]
    assert table.frame["extra_value_1"].tolist() == [None, None, 1]


@pytest.mark.parametrize(
    "row, problem",
    [("x.jpg 1", "expected 2 values after x.jpg, got 1"), ("x.jpg 1 0", "values must be -1 or 1"),
     ("x.jpg 1 no", "values must be -1 or 1")],
)
def test_strict_reader_names_file_and_line(tmp_path, row, problem):
    path = tmp_path / "attrs.txt"
    path.write_text(f"1\nA B\n{row}\n")
    with pytest.raises(CvaeError, match=rf"attrs.txt:3: {problem}"):
        load_attributes(path)


def test_partition_reader(tmp_path):
    path = tmp_path / "list_eval_partition.txt"
    path.write_text("000001.jpg 0\r\n000002.jpg 2\r\n")
    assert read_partition(path) == {"000001.jpg": 0, "000002.jpg": 2}
    path.write_text("000001.jpg 3\n")
    with pytest.raises(CvaeError, match="list_eval_partition.txt:1: expected '<image_id> 0|1|2'"):
        read_partition(path)


def test_celeba_has_forty_attributes_in_file_order():
    assert len(CELEBA_ATTRIBUTES) == 40
    assert CELEBA_ATTRIBUTES[0] == "5_o_Clock_Shadow" and CELEBA_ATTRIBUTES[20] == "Male"
    assert CELEBA_ATTRIBUTES[31] == "Smiling" and CELEBA_ATTRIBUTES[39] == "Young"
