import pytest

from ab_plugin._registry import Registry


def test_register_create_and_list_in_order():
    reg = Registry("thing")
    reg.register("b", lambda k=1: ("b", k))

    @reg.register("a")
    def make_a():
        return "a"

    assert reg.names() == ["b", "a"]
    assert reg.create("b", k=3) == ("b", 3)
    assert reg.create("a") == "a" and "a" in reg and "c" not in reg


def test_unknown_and_duplicate_names_are_one_line_errors():
    reg = Registry("engine")
    reg.register("head", dict)
    with pytest.raises(ValueError, match=r"unknown engine 'x': choose from 'head'$"):
        reg.get("x")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("head", dict)


def test_split_spec():
    reg = Registry("sharing")
    reg.register("poly", dict)
    reg.register("per_class", dict)
    assert reg.split("poly:3") == ("poly", "3")
    assert reg.split("per_class") == ("per_class", None)
    with pytest.raises(ValueError, match="unknown sharing 'hat'"):
        reg.split("hat:3")
    with pytest.raises(ValueError, match="must be a name"):
        reg.split(3)
