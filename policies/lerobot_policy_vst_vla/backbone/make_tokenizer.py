"""Train the tiny byte-level BPE tokenizer shipped in `lerobot_policy_vst_vla/assets/tiny_tokenizer/`.

    python -m lerobot_policy_vst_vla.backbone.make_tokenizer [out_dir]

No pretrained VLM may be downloaded, so the tiny backbone gets its own tokenizer: Qwen2's
pre-tokenizer (byte level, one digit per token) with a BPE vocabulary learnt from a fixed corpus of
spatial-QA, robot-instruction, number and JSON text, followed by Qwen2.5-VL's added tokens in Qwen's
order and its chat template. Everything is seeded, so running this again writes identical files
(tests/test_backbone.py checks that).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from lerobot_policy_vst_vla.backbone.build import TINY_TOKENIZER_DIR
from lerobot_policy_vst_vla.backbone.qwen_format import CHAT_TEMPLATE, EOS_TOKEN, PAD_TOKEN, QWEN_ADDED_TOKENS, THINK_TOKENS

BPE_VOCAB_SIZE = 4096  # byte alphabet + merges; the added tokens come on top
MODEL_MAX_LENGTH = 32768
CORPUS_LINES = 20000

OBJECTS = (
    "red cube", "blue cube", "green cube", "yellow block", "bowl", "plate", "mug", "cup", "bottle",
    "banana", "apple", "orange", "box", "basket", "drawer", "cabinet", "stove", "microwave", "sink",
    "table", "chair", "sofa", "bed", "lamp", "monitor", "keyboard", "laptop", "book", "shelf", "door",
    "window", "pillow", "toilet", "bathtub", "refrigerator", "television", "desk", "trash can", "plant",
    "picture", "counter", "dresser", "nightstand", "sphere", "cylinder", "tray", "spoon", "knife",
)
COLORS = ("red", "blue", "green", "yellow", "black", "white", "gray", "brown", "purple", "orange", "pink")
DIRECTIONS = ("left", "right", "front", "behind", "above", "below", "front-left", "front-right",
              "back-left", "back-right")
CAMERA_MOTIONS = ("move forward", "move backward", "move left", "move right", "turn left", "turn right",
                  "rotate clockwise", "rotate counterclockwise", "move up", "move down")
ROBOT_VERBS = ("pick up", "put", "place", "push", "open", "close", "turn on", "turn off", "stack",
               "move", "slide", "lift", "grasp", "release", "rotate")
ROBOT_PREPS = ("on", "in", "into", "on top of", "next to", "inside", "under", "in front of", "behind")
# Plain English so that prose outside our templates still tokenizes into words, not bytes.
ENGLISH = """
the of and to in is it that for on with as was at by be this are from or have an they which one you
were her all she there would their we him been has when who will more no if out so said what up its
about into than them can only other new some could time these two may then do first any my now such
like our over man me even most made after also did many before must through back years where much your
way well down should because each just those people how too little state good very make world still
own see men work long get here between both life being under never day same another know while last
might us great old year off come since against go came right used take three states himself few house
use during without again place around however home small found thought went say part once general high
upon school every does got united left number course war until always away something fact though water
less public put think almost hand enough far took head yet government system better set told nothing
night end why called did find going look asked later point knew city next program business give group
toward young days let room president side social given present several order national possible rather
second face per among form important often things looked early white case john become large big need
four within felt along children saw best church ever least power development light thing seemed family
interest want members mind country area others done turned although open god service certain kind problem
began different door thus help sense means whole matter perhaps itself york times law human line above
name example action company hands local show whether five history gave today either act feet across taken
past quite anything seen having death experience body word half really week free car field already
information tell together college shall money period held keep sure real probably million behind miss
clear street policy person robot camera image video frame scene object position distance depth height
width length size meter meters centimeter centimeters degree degrees angle closer farther nearest farthest
larger smaller taller shorter wider narrower heavier lighter count counting direction orientation rotation
translation motion trajectory route path plan step steps first then finally answer question option options
choose select following correct choice reasoning think because therefore so first second third gripper
arm joint elbow wrist shoulder base pan lift flex roll target goal success failure episode task demonstration
policy action actions observation state reward grasp pick place push pull slide stack drawer cabinet kitchen
living bedroom bathroom office table floor wall ceiling corner center middle edge top bottom inside outside
surface height-wise relative absolute coordinate coordinates frame frames box boxes bounding detection
grounding correspondence point points pixel pixels view views viewpoint perspective clock o'clock
ability able absence accept access accident account accurate achieve acid acquire active activity actor
actual add address adjust admit adult advance advantage advice affect afford afraid afternoon age agency
agent agree ahead aim air airport alarm alive allow alone aloud alter amount analysis ancient anger animal
annual apart apparent appeal appear apply approach approve argue arise arrange arrest arrive article artist
aside asleep assume attach attack attempt attend attention attitude attract audience author autumn available
average avoid award aware baby background bad bag balance ball band bank bar bare barrier basic basis bath
battle beach bear beat beautiful beauty beer begin behave belief believe bell belong below belt bench bend
benefit beside bet beyond bicycle bill bind bird birth bit bite bitter blade blame blank blind block blood
blow board boat bone bonus border borrow boss bother bottle bottom bound bowl brain branch brand brave bread
break breakfast breath brick bridge brief bright bring broad brother budget build burn burst bus busy butter
button buy cable cake calculate calm campaign cancel candle capable capital captain capture card care career
careful carry cast catch category cause ceiling cell chain chair challenge champion chance change channel
chapter character charge chart chase cheap check cheek cheese chest chicken chief child choice circle
citizen claim class classic clean client climate climb clock close cloth cloud club coach coast coat code
coffee coin cold collect colour column combine comfort command comment common communicate community compare
compete complain complete complex component concept concern conclude condition conduct confirm conflict
connect consider constant construct contact contain content contest context continue contract contrast
control convert cook cool copy core corner correct cost cotton couch could council count couple courage
cover crack craft crash crazy cream create credit crew crime crisis critic crop cross crowd crucial cry
culture curious current curve custom customer cycle damage dance danger dark data date daughter dead deal
dear debate decade decide declare decline deep defeat defend define degree delay deliver demand deny depend
describe desert design desire destroy detail detect determine develop device diet differ difficult dig
dinner direct dirt discover discuss disease dish display distance distinct divide doctor document dog
dollar domestic double doubt draft drag drama draw dream dress drink drive drop dry due dust duty eager
ear earn earth ease east easy eat economy edge edit educate effect effort egg elect element else emerge
emotion employ empty enable encounter encourage enemy energy engage engine enjoy ensure enter entire entry
environment equal equipment error escape essay establish estimate event evidence exact examine excellent
exchange excite exercise exist expand expect expensive explain explore export express extend extra extreme
fabric factor fail fair faith fall false fame fan fashion fast fat father fault favour fear feature fee feed
feel fellow female fence fight figure file fill film final finance fine finger finish fire firm fish fit
fix flag flat flight float flow flower fly focus fold follow food foot force foreign forest forget forgive
fork formal former forward frame fresh friend front fruit fuel full fun function fund funny future gain game
gap garage garden gas gate gather gentle gift girl glad glass global glove goal gold golf grab grade grain
grand grant grass grave green grey ground grow guard guess guest guide guilty gun habit hair hall handle
hang happen happy hard harm hat hate heal health hear heart heat heavy hello hide highlight hill hire hold
hole holiday hollow honest hope horse host hot hotel hour huge humour hungry hunt hurry hurt husband ice
idea ideal identify ignore ill illustrate imagine impact imply import impose improve include income increase
indeed index indicate individual industry infant influence inform initial injury inner input insect insist
install instance instead institute instruct insurance intend internal introduce invest invite involve iron
island issue item jacket job join joke journey judge juice jump junior just key kick kill king kiss kitchen
knee knock label labour lack lady lake land language laptop large laugh launch layer lead leaf lean learn
leather leave lecture leg legal lend lesson letter level library lie limit link lip liquid list listen
literature load loan lock logic lonely loose lose loss lot loud love low luck lunch machine magazine mail
main maintain major male manage manner map mark market marry mass master match material mathematics meal
measure meat media medical meet member memory mental mention menu mess message metal method midnight milk
mind minute mirror mission mistake mix mobile mode model modern moment monitor month mood moon moral morning
mother motor mount mountain mouse mouth movie mud muscle museum music nail narrow nation nature near neat
neck negative nerve net network news nice noise normal north nose note notice novel nurse object obtain
obvious occasion occur ocean offer officer official oil okay online operate opinion oppose opposite orange
organ origin outcome output oven owner pack page pain paint pair palace panel paper parent park partner
party pass passenger patient pattern pause pay peace peak pen pencil pension pepper perfect perform permit
phase phone photo phrase physical piano pick piece pile pilot pin pink pipe pitch plant plastic plate play
pleasant pocket poem poet police polite pool poor popular port pose positive post pot potato pound pour
powder practice praise pray prefer prepare press pressure pretty prevent price pride priest print prior
prison private prize process produce product profit project promise proof proper property propose protect
proud prove provide pull pump punch pupil purchase pure purple purpose pursue push qualify quality quantity
quarter queen quick quiet quote race radio rail rain raise range rank rapid rare rate raw reach react read
ready reason recall receive recent recipe record recover reduce refer reflect reform refuse region regret
reject relate relax release relief rely remain remark remember remind remote remove rent repair repeat
replace reply report request require rescue research reserve resist resolve resource respect respond rest
result retain retire return reveal review rice rich ride ring rise risk river road rock role roof root rope
rough round routine row royal rub rubber rule run rush sad safe sail salad salary sale salt sample sand
save scale scare schedule science score screen sea search season seat secret section sector secure seek
select sell send senior sequence series serious serve session settle shade shadow shake shape share sharp
sheet shell shift shine ship shirt shock shoe shoot shop shot shout shower shut sick sight sign signal
silence silly silver similar simple sing single sister sit site skill skin sky sleep slice slight slip slow
smart smell smile smoke smooth snow soap sock soft soil soldier solid solve song soon sorry sort soul sound
soup source south space spare speak special speech speed spell spend spin spirit split sport spot spread
spring square staff stage stair stamp stand star start station stay steady steal steel stick stiff stock
stone stop store storm story straight strange stream strength stress stretch strict strike string strong
structure student studio study stuff style subject succeed suck sudden suffer sugar suggest suit summer
sun supply support suppose surprise survey survive suspect swallow sweet swim switch symbol tail tale talk
tall tank tape taste tax tea teach team tear technical technique temperature tend tennis tent term test
text thank theme theory thick thin threat throat throw ticket tie tight tip tired title tomorrow tone tongue
tool tooth topic total touch tough tour towel tower town toy track trade tradition traffic train transfer
transport trap travel treat tree trend trial trick trip trouble truck trust truth try tube tune tunnel
twist type ugly uncle understand union unique unit universe unless upper upset urban urge usual valley
value van variety vast vegetable vehicle version victim village visit visual voice volume vote wage wait
wake walk wander warm warn wash waste watch wave weak wealth weapon wear weather wedding weekend weigh
welcome west wet wheel whisper wide wife wild win wind wine wing winter wire wise wish witness wonder wood
wool worry worth wrap write wrong yard yellow yesterday youth zone
""".split()
# Inflected forms (some not real words) give BPE common English endings as tokens.
SUFFIXES = ("", "", "", "", "s", "ed", "ing", "er", "ly", "ion")


def _num(rng: random.Random, lo: float = 0.0, hi: float = 5.0, digits: int = 2) -> str:
    return f"{rng.uniform(lo, hi):.{digits}f}"


def _box(rng: random.Random) -> list[float]:
    return [round(rng.uniform(-2, 2), 2), round(rng.uniform(-1, 1), 2), round(rng.uniform(0.5, 6), 2),
            round(rng.uniform(0.05, 2), 2), round(rng.uniform(0.05, 2), 2), round(rng.uniform(0.05, 2), 2),
            round(rng.uniform(-1, 1), 2), round(rng.uniform(-1, 1), 2), round(rng.uniform(-1, 1), 2)]


def _line(rng: random.Random) -> str:
    a, b = rng.sample(OBJECTS, 2)
    letters = "ABCD"
    kind = rng.randrange(12)
    if kind == 0:
        return (f"Which is closer to the camera, the {a} (point A) or the {b} (point B)? "
                f"<think>The {a} is at a depth of {_num(rng)} m and the {b} at {_num(rng)} m.</think>"
                f"{rng.choice(letters[:2])}")
    if kind == 1:
        return (f"What is the distance between the {a} and the {b} in meters? "
                f"Answer with a single number. {_num(rng, 0, 10)}")
    if kind == 2:
        return (f"Measure the {rng.choice(('height', 'width', 'length'))} of the {a} in centimeters. "
                f"{rng.randint(2, 300)}")
    if kind == 3:
        boxes = [{"label": rng.choice(OBJECTS), "bbox_3d": _box(rng)} for _ in range(rng.randint(1, 3))]
        return (f"The camera has hfov {rng.randint(40, 110)} and vfov {rng.randint(30, 90)} degrees, "
                f"width {rng.choice((224, 256, 640, 1280))} and height {rng.choice((224, 256, 480, 720))}. "
                f"Detect the 3D bounding boxes of all objects and output them in JSON. {json.dumps(boxes)}")
    if kind == 4:
        opts = rng.sample(DIRECTIONS, 4)
        body = " ".join(f"{letters[i]}. {o}" for i, o in enumerate(opts))
        return (f"Standing at the {a} and facing the {rng.choice(OBJECTS)}, where is the {b}? {body} "
                f"Answer with the option's letter from the given choices directly. {rng.choice(letters)}")
    if kind == 5:
        return (f"Relative to the first image, how did the camera move in the second image? "
                f"The camera {rng.choice(CAMERA_MOTIONS)} by {_num(rng, 0, 3)} meters and "
                f"{rng.choice(CAMERA_MOTIONS)} by {rng.randint(0, 180)} degrees.")
    if kind == 6:
        return (f"If the second camera is at 12 o'clock, at which clock position is the first camera? "
                f"{rng.randint(1, 12)} o'clock")
    if kind == 7:
        return f"How many {rng.choice(OBJECTS)}s are there in the video? {rng.randint(0, 20)}"
    if kind == 8:
        return (f"{rng.choice(ROBOT_VERBS)} the {rng.choice(COLORS)} {a} {rng.choice(ROBOT_PREPS)} the {b}. "
                f"Point {letters[rng.randrange(4)]} in image 1 corresponds to pixel ({rng.randint(0, 1279)}, "
                f"{rng.randint(0, 719)}) in image 2.")
    if kind == 9:
        state = {"shoulder_pan.pos": float(_num(rng, -90, 90)), "gripper.pos": float(_num(rng, 0, 100)),
                 "success": rng.random() < 0.5, "episode_index": rng.randint(0, 999)}
        return json.dumps(state)
    if kind == 10:
        return (f"To go from the {a} to the {b}, first turn {rng.choice(('left', 'right'))}, then walk "
                f"{_num(rng, 0, 8, 1)} meters, and finally turn {rng.choice(('left', 'right', 'back'))}.")
    words = [w + rng.choice(SUFFIXES) for w in rng.choices(ENGLISH, k=rng.randint(8, 24))]
    return " ".join(words).capitalize() + rng.choice((".", "?", "!", ",", ";"))


def corpus(n_lines: int = CORPUS_LINES, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [_line(rng) for _ in range(n_lines)]


def train_tokenizer() -> Qwen2Tokenizer:
    """BPE on `corpus()` with Qwen2's normalizer, pre-tokenizer and decoder, plus Qwen2.5-VL's added tokens."""
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus(), trainer)
    model = json.loads(bpe.to_str())["model"]

    tok = Qwen2Tokenizer(
        vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
        unk_token=None, bos_token=None, eos_token=PAD_TOKEN, pad_token=PAD_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
    # Add one at a time so ids follow Qwen's order exactly (<|endoftext|> is already in).
    for content, special in QWEN_ADDED_TOKENS[1:]:
        tok.add_tokens([AddedToken(content, special=special, normalized=False)], special_tokens=special)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tok.add_special_tokens({"additional_special_tokens": [c for c, s in QWEN_ADDED_TOKENS[1:] if s]})
    tok.eos_token = EOS_TOKEN
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_tokenizer(out_dir: str | Path = TINY_TOKENIZER_DIR) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer().save_pretrained(str(out_dir))
    return out_dir


if __name__ == "__main__":
    print(f"wrote {write_tokenizer(*sys.argv[1:2])}")
