import pytest

from turnrl.envs import check_env
from turnrl.envs.adapters import TEXTARENA_OFFLINE, GymTextEnv, TextArenaEnv, render_text


@pytest.mark.parametrize("game", TEXTARENA_OFFLINE)
def test_offline_textarena_games_pass_check_env(game):
    check_env(TextArenaEnv(game))


def test_textarena_guess_the_number_shows_only_new_text():
    e = TextArenaEnv("GuessTheNumber-v0")
    e.reset(0)
    s = e.step("[10]")
    assert s.messages[0].content in ("[Player] [10]\n[GAME] The target number is higher.",
                                     "[Player] [10]\n[GAME] The target number is lower.")


def test_unsupported_textarena_games_are_one_clear_error():
    with pytest.raises(ValueError, match="'Wordle-v0' is not supported offline"):
        TextArenaEnv("Wordle-v0")


@pytest.mark.parametrize("env_id", ["FrozenLake-v1", "CliffWalking-v1"])
def test_gymnasium_text_envs_pass_check_env(env_id):
    check_env(GymTextEnv(env_id))


def test_gymnasium_frozen_lake_by_hand():
    e = GymTextEnv("FrozenLake-v1", is_slippery=False)
    msgs = e.reset(0)
    assert "@FFF\nFHFH\nFFFH\nHFFG" in msgs[1].content
    s = e.step("I will go right")
    assert "S@FF" in s.messages[0].content and s.answer == "right"
    assert e.step("3").answer == "up"  # an action number works too
    assert e.step("jump").valid is False
    for a in ("left", "down", "down", "right", "right", "down", "right"):  # around the holes
        s = e.step(a)
    assert s.terminated and s.reward == 1.0 and s.correct
    assert render_text("\x1b[41mS\x1b[0mF\x1b[1mH") == "@FH"
