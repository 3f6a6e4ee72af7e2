"""Keys that name no attributes pick them from the data, by rules that work for any labels."""

import numpy as np
import pytest

from cvae.core.attributes import check_names, chosen, figure_choices, most_balanced, named_attributes
from cvae.core.config import params_from_dict
from cvae.core.errors import CvaeError

NAMES = ["Rare", "Even", "Common", "Nearly_Even"]
# shares of +1: 0.1, 0.5, 0.9, 0.4 (Rare and Common equally far from one half)
ROWS = np.where(np.arange(10)[:, None] < np.array([1, 5, 9, 4]), 1, -1)


def test_the_most_balanced_attributes_come_first_and_no_more_than_the_data_has():
    assert most_balanced(NAMES, ROWS, 2) == ["Even", "Nearly_Even"]
    assert most_balanced(NAMES, ROWS, 10) == ["Even", "Nearly_Even", "Rare", "Common"]  # ties: the data's order
    assert most_balanced(["Only"], ROWS[:, :1], 2) == ["Only"]


def test_figures_choose_from_the_data_when_params_name_nothing():
    choice = figure_choices(params_from_dict({}), NAMES, ROWS)
    assert choice["sweep_attributes"] == ["Even", "Nearly_Even"]
    assert list(choice["conditional_rows"])[0] == "plain"
    assert set(choice["conditional_rows"]["plain"]) == set(choice["conditional_rows"]) - {"plain"}
    assert all(row[name] == 1 and sum(v == 1 for v in row.values()) == 1
               for name, row in choice["conditional_rows"].items() if name != "plain")
    assert list(choice["edit_rows"]) == ["+ Even", "+ Nearly_Even", "+ Rare"]
    assert len(choice["latent_color_attributes"]) == 3


def test_figures_keep_what_params_name():
    params = params_from_dict({"visualize": {"sweep_attributes": ["Rare", "Common"], "edit_rows": {"x": {"Rare": 1}},
                                             "latent_color_attributes": ["Common"]}})
    choice = figure_choices(params, NAMES, ROWS)
    assert choice["sweep_attributes"] == ["Rare", "Common"]
    assert choice["edit_rows"] == {"x": {"Rare": 1}}
    assert choice["latent_color_attributes"] == ["Common"]


def test_a_single_attribute_is_enough():
    choice = figure_choices(params_from_dict({}), ["Only"], ROWS[:, :1])
    assert choice["sweep_attributes"] == ["Only"]
    assert choice["conditional_rows"] == {"plain": {"Only": -1.0}, "Only": {"Only": 1.0}}


def test_the_default_params_name_no_attribute():
    assert all(not names for names in named_attributes(params_from_dict({})).values())
    check_names(params_from_dict({}), ["Anything"], "data")


def test_chosen_is_every_attribute_or_the_named_ones():
    assert chosen([], NAMES, "k") == NAMES
    assert chosen(["Common"], NAMES, "k") == ["Common"]
    with pytest.raises(CvaeError, match="k: 'Comon' is not an attribute of the data; did you mean 'Common'"):
        chosen(["Comon"], NAMES, "k")
