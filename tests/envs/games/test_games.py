"""Each game's rules by hand and its reference player's documented score."""
import pytest

from turnrl.envs import check_env
from turnrl.envs.games import (BinarySearchPlayer, CandidatePlayer, FrozenLakeEnv, GuessNumberEnv, HypothesisPlayer,
                               MazeEnv, ShortestPathPlayer, SplitPlayer, TwentyQuestionsEnv, WILTEnv, WordleEnv, play)
from turnrl.envs.games.grid import shortest_path
from turnrl.envs.games.twenty_questions import ATTRIBUTES, OBJECTS, parse_question
from turnrl.envs.games.wilt_rules import OFFICIAL, OFFICIAL_LITE, train_rules
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
    assert s.messages[0].content == ("Higher." if e.secret > 50 else "Lower.") and s.answer == "50"
    assert e.step("no number").valid is False
    # binary search over 1..100 always wins within 7 guesses (200 held-out games: 20 numbers, 10 times each)
    assert scores(GuessNumberEnv(split="eval"), BinarySearchPlayer, 200) == (200, 1.0, 5.75)


def test_guess_number_format_penalty_by_hand():
    e = GuessNumberEnv(low=1, high=100, format_penalty=0.1)
    e.reset(0)
    assert e.step("no number").reward == -0.1  # a reply without a number costs the penalty
    guess = 51 if e.secret == 50 else 50
    assert e.step(str(guess)).reward == 0.0  # a valid wrong guess costs nothing
    assert GuessNumberEnv().format_penalty == 0.0  # off by default
    with pytest.raises(ValueError, match="format_penalty"):
        GuessNumberEnv(format_penalty=-1)


def test_wordle_marks_by_hand():
    assert score("crane", "crane") == "GGGGG"
    assert score("allee", "eagle") == "YY.YG"  # after the green E: one A, one L, one E left to colour
    assert score("speed", "abide") == "..Y.Y"  # two Es guessed, one in the secret
    assert score("lolly", "hello") == ".YGG."  # three Ls guessed, both of the secret's are green
    assert len(word_list()) == 1000 and all(len(w) == 5 and w.isalpha() for w in word_list())


def test_wordle_reference_score():
    solved, ret, turns = scores(WordleEnv(split="eval"), CandidatePlayer, 200)
    assert (solved, ret) == (199, 0.995) and turns == pytest.approx(3.665)


def test_maze_rewards_by_hand():
    e = MazeEnv(size=2)
    e.reset(0)
    e.grid = ["#####", "#.#.#", "#.#.#", "#..G#", "#####"]  # a fixed maze: down, down, right, right
    e.goal = (3, 3)
    assert e.step("right").reward == -4.0 and e.pos == (1, 1)  # a wall: the agent stays
    assert e.step("go down").reward == -1.0
    assert e.step("down").reward == -1.0 and e.step("right").reward == -1.0
    last = e.step("right")
    assert last.terminated and last.reward == 0.0 and last.correct


def test_maze_reference_player_takes_the_shortest_path():
    env = MazeEnv()
    for seed in range(20):
        env.reset(seed)
        optimal = len(shortest_path(env.grid, env.pos, env.goal, "#"))
        r = play(env, ShortestPathPlayer, seed)
        assert r.solved and r.ret == -(optimal - 1)
    assert scores(MazeEnv(split="eval"), ShortestPathPlayer, 100) == (100, -16.36, 17.36)


def test_frozen_lake_hole_ends_the_episode():
    e = FrozenLakeEnv()
    e.reset(0)
    e.grid, e.pos = ["SH", "FG"], (0, 0)
    e.goal = (1, 1)
    s = e.step("right")
    assert s.terminated and s.reward == 0.0 and s.info["fell"]
    assert scores(FrozenLakeEnv(split="eval"), ShortestPathPlayer, 100) == (100, 1.0, 6.0)


def test_twenty_questions_oracle_and_reference_score():
    assert len({v for v in OBJECTS.values()}) == len(OBJECTS)  # every object is identifiable
    assert parse_question("Can it fly?") == ("ask", "fly") and parse_question("Is it a dog?") == ("guess", "dog")
    e = TwentyQuestionsEnv()
    e.reset(3)
    s = e.step("Is it an animal?")
    assert s.messages[0].content == ("Yes." if "animal" in OBJECTS[e.secret] else "No.") and s.reward == -1.0
    assert e.step("Tell me a story.").valid is False
    assert e.step(f"Is it a {e.secret}?").reward == 0.0
    assert set().union(*OBJECTS.values()) <= set(ATTRIBUTES)
    assert scores(TwentyQuestionsEnv(split="eval"), SplitPlayer, 100) == (100, -5.49, 6.49)


@needs_bwrap
def test_wilt_protocol_by_hand():
    e = WILTEnv(max_tests=2, split="eval")
    e.reset(1)  # the benchmark's rule 2, 'x < y < z'
    s = e.step("Test Case: (1, 2, 3)")
    assert s.messages[0].content == "True\n1 tests left."
    s = e.step("Let me try. Test Case: (3, 2, 1)")
    assert s.messages[0].content == "False\n0 tests left."
    s = e.step("Test Case: (1, 1, 1)")  # a third test: the turn was the guess's, the game is lost
    assert s.truncated and not s.valid and s.reward == 0.0
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
def test_wilt_eval_plays_the_benchmarks_fifty_rules_and_the_reference_player_finds_43():
    assert len(OFFICIAL) == 50 and len(set(OFFICIAL)) == 50 and len(OFFICIAL_LITE) == 10
    assert WILTEnv(split="eval").rules == OFFICIAL and WILTEnv(split="eval", lite=True).rules == OFFICIAL_LITE
    solved, ret, _ = scores(WILTEnv(split="eval"), HypothesisPlayer, 50)
    assert solved == 43  # 7 rules agree with an earlier one on all 26 probes (e.g. x - y == z and y + z == x)


def test_wilt_training_rules_are_none_of_the_benchmarks():
    """Equivalence as the env checks it, on a subset of its points: rules that differ on
    the subset differ on all points, so distinct subset signatures prove the split."""
    import itertools

    from turnrl.envs.games.wilt import POINTS_CODE, _value, rule_fn

    ns: dict = {}
    exec(POINTS_CODE, ns)
    pts = list(itertools.islice(ns["points"](), 2000)) + [p for p in ns["points"]() if max(map(abs, p)) <= 6][:2197]

    def sig(rule):
        f = rule_fn(rule)
        return tuple(_value(f, p) for p in pts)

    train = train_rules()
    held = {sig(r) for r in OFFICIAL + OFFICIAL_LITE}
    sigs = [sig(r) for r in train]
    assert len(train) == 308 and not held & set(sigs)  # no training rule is equivalent to a benchmark rule
    assert len(set(sigs)) == len(train)  # nor to another training rule
    assert WILTEnv().rules == list(train)
