"""Small fixed word lists for the synthetic tasks (keys, word values, common-words lists).

Written here (not sampled from a package) so a task seed means the same sample everywhere.
All entries are lower-case, alphabetic and distinct."""
from __future__ import annotations

ADJECTIVES = """
able acid angry brave bright broad calm cheap clean clever cold cool crisp curly damp dark
deep dizzy dry dull eager early easy empty fair fancy fast fierce flat fresh fuzzy gentle
giant glad grand green happy hard heavy hollow huge humble icy jolly keen kind large lazy
light little lively loud lucky mellow mighty moody narrow neat noble odd pale plain polite
proud quick quiet rapid rare red rich rough round royal rusty sandy sharp shiny short silent
silly simple slow small smooth soft solid sour spicy steep sticky stout sunny sweet swift
tall tame tender thick thin tidy tiny tough vast warm wet wide wild windy wise young
""".split()

NOUNS = """
ant apple arch badge bagel banjo barn basket beach bear bell bench berry bird blanket boat
bottle bridge brush bucket button cabin cactus camel candle canoe carpet castle cherry
circle cloud clover coat comet copper cotton crayon crow cup daisy desert dolphin door
dragon drum eagle engine falcon feather fence fiddle flag flute forest fountain frog garden
garlic giraffe glove goat harbor hammer helmet honey horse island jacket jar kettle kite
ladder lantern lemon lion lizard magnet maple marble meadow melon mirror monkey moon
mountain needle ocean onion otter owl panda parrot peach pebble pencil penguin pepper piano
pillow pirate planet pony pumpkin puzzle rabbit radio river robot rocket saddle salmon
shadow shell ship spoon squirrel stone sugar tiger tomato tower tractor trumpet tulip
turtle umbrella valley violin wagon walnut whale window wizard wolf zebra
""".split()

assert len(set(ADJECTIVES)) == len(ADJECTIVES) and len(set(NOUNS)) == len(NOUNS)
assert not set(ADJECTIVES) & set(NOUNS)
