"""Twenty Questions (LMRL-Gym, arXiv 2311.18232) with a rule-based oracle over an
attribute table: yes/no questions about properties, or a guess ("Is it a dog?").
Reward -1 for every turn that does not name the object, 0 for the one that does."""
from __future__ import annotations

import re

from turnrl.envs.games.base import GameEnv, hold_out
from turnrl.types import Message, Step

# attribute -> words that ask about it (matched as whole words in the question)
ATTRIBUTES = {
    "animal": ["animal", "creature"],
    "alive": ["alive", "living", "live"],
    "mammal": ["mammal"],
    "bird": ["bird"],
    "fly": ["fly", "flies", "flying"],
    "water": ["water", "swim", "sea", "ocean"],
    "pet": ["pet", "pets", "domestic"],
    "big": ["big", "large", "bigger", "huge"],
    "food": ["food", "eat", "edible", "eaten"],
    "fruit": ["fruit"],
    "manmade": ["man-made", "manmade", "made", "manufactured", "artificial"],
    "electronic": ["electronic", "electric", "electricity", "battery", "plug"],
    "wheels": ["wheel", "wheels"],
    "furniture": ["furniture", "sit"],
    "kitchen": ["kitchen", "cook", "cooking"],
    "outdoor": ["outside", "outdoors", "outdoor"],
    "legs": ["leg", "legs"],
    "green": ["green"],
    "grey": ["grey", "gray"],
    "carry": ["carry", "pocket", "hold", "portable", "hand"],
    "screen": ["screen", "display"],
    "keyboard": ["keyboard", "type", "typing", "keys"],
    "climb": ["climb", "climbs", "climbing"],
}
_ROWS = """
dog       animal alive mammal pet legs
cat       animal alive mammal pet legs climb
horse     animal alive mammal big legs outdoor
elephant  animal alive mammal big legs outdoor grey
mouse     animal alive mammal legs grey
whale     animal alive mammal big water outdoor grey
dolphin   animal alive mammal water outdoor grey
bat       animal alive mammal fly outdoor
eagle     animal alive bird fly legs outdoor
penguin   animal alive bird water legs outdoor
parrot    animal alive bird fly pet legs climb
chicken   animal alive bird legs food outdoor
goldfish  animal alive water pet
shark     animal alive water big outdoor grey
frog      animal alive water legs green outdoor
snake     animal alive outdoor climb
bee       animal alive fly legs outdoor
apple     alive food fruit outdoor carry
banana    alive food fruit carry
lettuce   alive food green
tree      alive big green outdoor
cactus    alive green outdoor
car       manmade wheels big outdoor
bicycle   manmade wheels outdoor
airplane  manmade fly big wheels outdoor
boat      manmade water big outdoor
television manmade electronic screen
phone     manmade electronic screen carry
laptop    manmade electronic screen carry keyboard
refrigerator manmade electronic big kitchen
toaster   manmade electronic kitchen
chair     manmade furniture legs
table     manmade furniture legs kitchen
sofa      manmade furniture big
spoon     manmade kitchen carry
bread     food manmade kitchen
cheese    food manmade
rock      outdoor grey
"""
OBJECTS: dict[str, frozenset[str]] = {r.split()[0]: frozenset(r.split()[1:]) for r in _ROWS.strip().splitlines()}
_WORDS = re.compile(r"[a-z][a-z-]*")


def parse_question(text: str) -> tuple[str, str] | None:
    """('guess', object) or ('ask', attribute) from the last question in the reply."""
    qs = [q for q in re.split(r"(?<=\?)", text.lower()) if "?" in q] or [text.lower()]
    words = _WORDS.findall(qs[-1])
    for w in words:
        for name in OBJECTS:
            if w in (name, name + "s"):
                return "guess", name
    for w in words:
        for attr, keys in ATTRIBUTES.items():
            if w in keys:
                return "ask", attr
    return None


class TwentyQuestionsEnv(GameEnv):
    """Twenty Questions over 38 objects (8 held out for eval); a question naming an object is a guess."""

    max_turns = 20

    def __init__(self, max_turns: int | None = None, split: str = "train", eval_fraction: float = 0.2):
        super().__init__(max_turns, split)
        train, ev = hold_out(OBJECTS, eval_fraction, "twenty_questions")
        self.secrets = ev if self.split == "eval" else train  # 8 / 30 of the 38 objects

    def num_instances(self) -> int:
        return len(self.secrets)

    def instance(self) -> str:
        return self.secret

    def gold_answer(self) -> str:
        return f"Is it a {self.secret}?"

    def reset(self, seed: int) -> list[Message]:
        self.begin()
        self.secret = self.secrets[seed % len(self.secrets)]
        return [Message("user", f"Let's play twenty questions. I am thinking of an object (an animal, a plant, a food or "
                                f"a man-made thing). Ask yes/no questions about it, one per turn, or guess it "
                                f"('Is it a dog?'). You have {self.max_turns} turns.")]

    def step(self, action: str) -> Step:
        last = self.advance()
        q = parse_question(action)
        if q is None:
            return self.reply("I can only answer yes/no questions about the object's properties (is it an animal? "
                              "can it fly? is it electronic?) or a guess such as 'Is it a dog?'.", -1.0, last, False, None)
        kind, what = q
        if kind == "guess":
            if what == self.secret:
                return self.end(0.0, True, what)
            return self.reply(f"No, it is not a {what}.", -1.0, last, True, what)
        return self.reply("Yes." if what in OBJECTS[self.secret] else "No.", -1.0, last, True, f"ask:{what}")


class SplitPlayer:
    """Reference player: asks about the attribute that splits the remaining objects most
    evenly; names the object once one is left."""

    def __init__(self, env: TwentyQuestionsEnv):
        self.left = sorted(OBJECTS)
        self.asked: str | None = None

    def act(self, messages: list[Message]) -> str:
        if self.asked is not None:
            yes = messages[-1].content.startswith("Yes")
            self.left = [o for o in self.left if (self.asked in OBJECTS[o]) == yes]
        if len(self.left) == 1:
            self.asked = None
            return f"Is it a {self.left[0]}?"
        self.asked = min(ATTRIBUTES, key=lambda a: (abs(2 * sum(a in OBJECTS[o] for o in self.left) - len(self.left)), a))
        return f"Is it {ATTRIBUTES[self.asked][0]}?"
