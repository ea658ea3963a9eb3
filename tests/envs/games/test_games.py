"""Each game's rules by hand and its reference player's documented score."""
import pytest

from turnrl.envs import check_env
from turnrl.envs.games import (BinarySearchPlayer, CandidatePlayer, FrozenLakeEnv, GuessNumberEnv, HypothesisPlayer,
                               MazeEnv, ShortestPathPlayer, SplitPlayer, TwentyQuestionsEnv, WILTEnv, WordleEnv, play)
from turnrl.envs.games.grid import shortest_path
from turnrl.envs.games.twenty_questions import ATTRIBUTES, OBJECTS, parse_question
from turnrl.envs.games.wilt import RULES
from turnrl.envs.games.wordle import score, word_list
from turnrl.tools.sandbox import bwrap_path

needs_bwrap = pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap not installed (.ci/run installs it)")


def scores(env, player, n):
    rs = [play(env, player, s) for s in range(n)]
    return sum(r.solved for r in rs), sum(r.ret for r in rs) / n, sum(r.turns for r in rs) / n


@pytest.mark.parametrize("env", [GuessNumberEnv(), WordleEnv(), MazeEnv(), FrozenLakeEnv(), TwentyQuestionsEnv()],
                         ids=lambda e: type(e).__name__)
def test_games_pass_check_env(env):
    check_env(env)


@needs_bwrap
def test_wilt_passes_check_env():
    check_env(WILTEnv(lite=True))


def test_guess_number_hints_and_reference_score():
    e = GuessNumberEnv(low=1, high=100)
    e.reset(0)
    s = e.step("I guess 50.")
    assert s.messages[0].content == ("Higher." if e.secret > 50 else "Lower.") and s.info["answer"] == "50"
    assert e.step("no number").info["valid"] is False
    # binary search over 1..100 always wins within 7 guesses
    assert scores(GuessNumberEnv(), BinarySearchPlayer, 200) == (200, 1.0, 5.72)


def test_wordle_marks_by_hand():
    assert score("crane", "crane") == "GGGGG"
    assert score("allee", "eagle") == "YY.YG"  # after the green E: one A, one L, one E left to colour
    assert score("speed", "abide") == "..Y.Y"  # two Es guessed, one in the secret
    assert score("lolly", "hello") == ".YGG."  # three Ls guessed, both of the secret's are green
    assert len(word_list()) == 1000 and all(len(w) == 5 and w.isalpha() for w in word_list())


def test_wordle_reference_score():
    solved, ret, turns = scores(WordleEnv(), CandidatePlayer, 200)
    assert (solved, ret) == (199, 0.995) and turns == pytest.approx(3.66)


def test_maze_rewards_by_hand():
    e = MazeEnv(size=2)
    e.reset(0)
    e.grid = ["#####", "#.#.#", "#.#.#", "#..G#", "#####"]  # a fixed maze: down, down, right, right
    e.goal = (3, 3)
    assert e.step("right").reward == -4.0 and e.pos == (1, 1)  # a wall: the agent stays
    assert e.step("go down").reward == -1.0
    assert e.step("down").reward == -1.0 and e.step("right").reward == -1.0
    last = e.step("right")
    assert last.terminated and last.reward == 0.0 and last.info["correct"]


def test_maze_reference_player_takes_the_shortest_path():
    env = MazeEnv()
    for seed in range(20):
        env.reset(seed)
        optimal = len(shortest_path(env.grid, env.pos, env.goal, "#"))
        r = play(env, ShortestPathPlayer, seed)
        assert r.solved and r.ret == -(optimal - 1)
    assert scores(MazeEnv(), ShortestPathPlayer, 100) == (100, -16.76, 17.76)


def test_frozen_lake_hole_ends_the_episode():
    e = FrozenLakeEnv()
    e.reset(0)
    e.grid, e.pos = ["SH", "FG"], (0, 0)
    e.goal = (1, 1)
    s = e.step("right")
    assert s.terminated and s.reward == 0.0 and s.info["fell"]
    assert scores(FrozenLakeEnv(), ShortestPathPlayer, 100) == (100, 1.0, 6.0)


def test_twenty_questions_oracle_and_reference_score():
    assert len({v for v in OBJECTS.values()}) == len(OBJECTS)  # every object is identifiable
    assert parse_question("Can it fly?") == ("ask", "fly") and parse_question("Is it a dog?") == ("guess", "dog")
    e = TwentyQuestionsEnv()
    e.reset(3)
    s = e.step("Is it an animal?")
    assert s.messages[0].content == ("Yes." if "animal" in OBJECTS[e.secret] else "No.") and s.reward == -1.0
    assert e.step("Tell me a story.").info["valid"] is False
    assert e.step(f"Is it a {e.secret}?").reward == 0.0
    assert set().union(*OBJECTS.values()) <= set(ATTRIBUTES)
    assert scores(TwentyQuestionsEnv(), SplitPlayer, 100) == (100, -5.34, 6.34)


@needs_bwrap
def test_wilt_protocol_by_hand():
    e = WILTEnv(max_tests=2)
    e.reset(1)  # rule 'x < y < z'
    s = e.step("Test Case: (1, 2, 3)")
    assert s.messages[0].content == "True\n1 tests left."
    s = e.step("Let me try. Test Case: (3, 2, 1)")
    assert s.messages[0].content == "False\n0 tests left."
    s = e.step("Test Case: (1, 1, 1)")  # a third test: the turn was the guess's, the game is lost
    assert s.truncated and not s.info["valid"] and s.reward == 0.0
    e.reset(1)
    s = e.step("Final Guess: lambda x, y, z: x < y and y < z")  # the same rule written differently
    assert s.terminated and s.reward == 1.0 and s.info["tests"] == 0
    e.reset(1)
    assert e.step("Final Guess: lambda x, y, z: x < z").reward == 0.0


@needs_bwrap
def test_wilt_guess_is_hostile_code_and_runs_in_the_sandbox(tmp_path):
    e = WILTEnv()
    e.reset(0)
    marker = tmp_path / "pwned"
    s = e.step(f"Final Guess: lambda x, y, z: open('{marker}', 'w') and x > y")
    assert s.reward == 0.0 and not marker.exists()
    e.reset(0)
    assert e.step("Final Guess: lambda x, y, z: [0 for _ in iter(int, 1)]").reward == 0.0  # runs forever: stopped


@needs_bwrap
def test_wilt_has_fifty_rules_and_the_reference_player_finds_47():
    assert len(RULES) == 50 and len(set(RULES)) == 50
    solved, ret, _ = scores(WILTEnv(), HypothesisPlayer, 50)
    assert solved == 47  # rules 26, 39 and 41 agree with another rule on all 26 probes
