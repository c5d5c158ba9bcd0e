"""The product catalogue behind the synthetic corpus: categories, their attribute schemas and value pools, and
the word lists (benefit adjectives, use cases, marketing words, end phrases, placeholders) the prompts and the
reference writer draw from.

PDD, the paper's product-description dataset, is not released (arXiv 2503.20194), so this is our stand-in.
Values are plain ASCII with no commas, no leading `*`/`-` and no "Section" so that a value dropped into a
description can never trip an IFEval checker by accident (no_comma, bullet, section and highlight counts).
Numeric attributes are generated from ranges, which is where most distinct attribute-value pairs come from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

# -- value generators for numeric attributes -------------------------------------------------------------


def _steps(lo: float, hi: float, step: float) -> list[float]:
    out, x = [], lo
    while x <= hi + 1e-9:
        out.append(round(x, 3))
        x += step
    return out


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def numeric(lo: float, hi: float, step: float, unit: str) -> tuple[str, ...]:
    return tuple(f"{_fmt(v)} {unit}" for v in _steps(lo, hi, step))


def grams(lo: int, hi: int, step: int) -> tuple[str, ...]:
    # Above a kilogram people write kg; one decimal keeps the value readable.
    out = []
    for v in range(lo, hi + 1, step):
        out.append(f"{v} g" if v < 1000 else f"{_fmt(round(v / 1000, 2))} kg")
    return tuple(dict.fromkeys(out))


def dims(a: Sequence[int], b: Sequence[int], unit: str = "cm") -> tuple[str, ...]:
    return tuple(f"{x} x {y} {unit}" for x in a for y in b if y <= x)


# -- shared pools ----------------------------------------------------------------------------------------
COLOURS = (
    "charcoal grey", "olive green", "navy blue", "sand beige", "burgundy", "forest green", "slate grey", "ivory",
    "matte black", "coral", "teal", "mustard yellow", "sky blue", "rose pink", "cream", "terracotta", "lavender",
    "mint green", "espresso brown", "pearl white", "copper", "graphite", "stone", "midnight blue", "sage green",
    "brick red", "honey", "plum", "ocean blue", "silver", "champagne", "rust orange", "jet black", "cobalt blue",
    "blush", "moss green", "sandstone", "arctic white", "storm grey", "walnut brown", "dusty pink", "pine green",
)
FABRICS = (
    "organic cotton", "merino wool", "linen", "recycled polyester", "bamboo viscose", "cotton twill", "fleece",
    "corduroy", "denim", "cashmere blend", "ripstop nylon", "canvas", "jersey knit", "flannel", "velvet", "silk",
    "waxed cotton", "softshell", "microfibre", "hemp", "boucle", "chenille", "wool felt", "tweed",
)
HARD_MATERIALS = (
    "stainless steel", "anodised aluminium", "cast iron", "carbon steel", "copper", "brass", "titanium",
    "tempered glass", "borosilicate glass", "ceramic", "stoneware", "porcelain", "solid oak", "walnut wood",
    "bamboo", "acacia wood", "recycled plastic", "silicone", "beech wood", "rattan", "marble", "concrete",
    "leather", "vegan leather", "cork", "powder coated steel",
)
WOODS = ("solid oak", "walnut", "beech", "ash", "pine", "acacia", "birch plywood", "teak", "mango wood", "maple")
ORIGINS = (
    "Colombia", "Ethiopia", "Kenya", "Guatemala", "Brazil", "Peru", "Rwanda", "Honduras", "Costa Rica", "Sumatra",
    "Yunnan", "Darjeeling", "Assam", "Uji", "Ceylon", "Nepal", "Papua New Guinea", "Burundi", "Mexico", "Panama",
)
WARRANTY = tuple(f"{n} year" + ("s" if n > 1 else "") for n in range(1, 11))


@dataclass(frozen=True)
class Attribute:
    """One attribute of a category: display name, value pool, and verb phrases the writer completes with the value."""

    name: str
    values: tuple[str, ...]
    phrases: tuple[str, ...]  # "{v}" is the value; each reads after a subject: "It {phrase}."


@dataclass(frozen=True)
class Category:
    name: str            # plural, as shown in prompts ("backpacks")
    nouns: tuple[str, ...]  # product nouns used in names ("Backpack")
    attributes: tuple[Attribute, ...]
    adjectives: tuple[str, ...]  # benefit words the writer uses; keyword constraints draw from them
    uses: tuple[str, ...]        # use cases ("day hikes")


# Phrase sets shared by attribute kinds. Each reads after a subject ("The pack is made from ...").
MATERIAL = ("is made from {v}", "is crafted from {v}", "is built from {v}", "uses durable {v}")
COLOUR = ("comes in {v}", "is finished in {v}", "is available in {v}")
WEIGHT = ("weighs {v}", "weighs only {v}", "tips the scales at {v}")
CAPACITY = ("holds {v}", "offers {v} of space", "fits up to {v}")
SIZE = ("measures {v}", "comes in at {v}")
FEATURE = ("features {v}", "comes with {v}", "includes {v}", "adds {v}")
WARRANTY_P = ("is covered by a {v} warranty", "comes with a {v} warranty")
BATTERY = ("runs for {v} on a single charge", "lasts {v} between charges", "keeps going for {v}")
POWER = ("is rated at {v}", "runs on {v} of power", "delivers {v}")


def A(name: str, values: Sequence[str], phrases: Sequence[str]) -> Attribute:  # noqa: N802 (table shorthand)
    return Attribute(name, tuple(values), tuple(phrases))


CATEGORIES: tuple[Category, ...] = (
    Category("backpacks", ("Backpack", "Daypack", "Rucksack"), (
        A("Material", FABRICS, MATERIAL), A("Colour", COLOURS, COLOUR),
        A("Capacity", numeric(10, 45, 1, "litres"), CAPACITY), A("Weight", grams(400, 1600, 10), WEIGHT),
        A("Feature", ("a padded laptop sleeve", "water-resistant zips", "a hip belt", "a hydration port",
                      "a hidden back pocket", "a chest strap", "a rain cover", "a luggage strap"), FEATURE),
    ), ("durable", "comfortable", "lightweight", "roomy", "weatherproof", "versatile", "rugged", "organised"),
        ("day hikes", "daily commutes", "weekend trips", "school runs", "city travel")),
    Category("running shoes", ("Runner", "Trainer", "Racer"), (
        A("Upper", ("engineered mesh", "knit fabric", "recycled mesh", "synthetic suede", "woven mesh"), MATERIAL),
        A("Colour", COLOURS, COLOUR), A("Heel drop", numeric(0, 12, 1, "mm"), ("has a {v} heel drop",)),
        A("Weight", grams(180, 340, 5), WEIGHT),
        A("Cushioning", ("firm", "balanced", "plush", "maximal", "responsive"), ("offers {v} cushioning",)),
        A("Outsole", ("grippy rubber", "carbon rubber", "blown rubber", "lugged trail"), ("sits on a {v} outsole",)),
    ), ("springy", "breathable", "supportive", "light", "fast", "cushioned", "stable", "flexible"),
        ("tempo runs", "long runs", "race day", "easy miles", "trail running")),
    Category("coffee beans", ("Roast", "Blend", "Espresso"), (
        A("Origin", ORIGINS[:10] + ORIGINS[15:], ("comes from {v}", "is grown in {v}")),
        A("Roast level", ("light", "medium", "medium dark", "dark"), ("is a {v} roast",)),
        A("Tasting notes", ("dark chocolate", "cherry", "caramel", "citrus", "jasmine", "hazelnut", "brown sugar",
                            "blueberry", "toffee", "stone fruit", "red apple", "molasses"),
          ("shows notes of {v}", "tastes of {v}")),
        A("Bag size", numeric(250, 1000, 50, "g"), ("comes in a {v} bag",)),
        A("Process", ("washed", "natural", "honey", "anaerobic"), ("is {v} processed",)),
        A("Altitude", numeric(1200, 2200, 50, "metres"), ("grows at {v}",)),
    ), ("smooth", "rich", "bright", "balanced", "aromatic", "bold", "sweet", "fresh"),
        ("morning espresso", "pour over brewing", "cold brew", "the office", "slow weekends")),
    Category("loose leaf teas", ("Tea", "Infusion", "Brew"), (
        A("Tea type", ("green", "black", "oolong", "white", "herbal", "rooibos", "jasmine green"),
          ("is a {v} tea", "is a fine {v} tea")),
        A("Origin", ORIGINS[10:], ("comes from {v}", "is picked in {v}")),
        A("Tasting notes", ("honey", "malt", "orchid", "peach", "toasted rice", "mint", "citrus peel", "vanilla"),
          ("has notes of {v}",)),
        A("Format", ("loose leaf", "pyramid bags", "compostable bags"), ("comes as {v}",)),
        A("Net weight", numeric(50, 500, 25, "g"), ("comes in a {v} tin",)),
        A("Caffeine", ("caffeine free", "low caffeine", "medium caffeine", "high caffeine"), ("is {v}",)),
    ), ("soothing", "fragrant", "delicate", "refreshing", "calming", "floral", "earthy", "mellow"),
        ("quiet evenings", "afternoon breaks", "iced tea", "gifting", "mindful mornings")),
    Category("desk lamps", ("Lamp", "Task Light", "Desk Light"), (
        A("Material", ("anodised aluminium", "powder coated steel", "brass", "walnut wood", "ceramic"), MATERIAL),
        A("Colour", COLOURS, COLOUR), A("Power", numeric(5, 15, 1, "watts"), POWER),
        A("Colour temperature", numeric(2700, 6500, 100, "kelvin"), ("glows at {v}",)),
        A("Feature", ("a touch dimmer", "a charging port", "a swing arm", "a memory function", "an auto-off timer"),
          FEATURE),
        A("Height", numeric(30, 60, 1, "cm"), ("stands {v} tall",)),
    ), ("adjustable", "sleek", "focused", "minimal", "warm", "bright", "compact", "flexible"),
        ("late night study", "home offices", "reading", "drafting", "bedside use")),
    Category("headphones", ("Headphones", "Earbuds", "Headset"), (
        A("Fit", ("over-ear", "on-ear", "in-ear"), ("has an {v} fit", "sits {v}")),
        A("Battery life", numeric(10, 60, 1, "hours"), BATTERY), A("Colour", COLOURS, COLOUR),
        A("Connectivity", ("Bluetooth 5.3", "Bluetooth 5.2", "Bluetooth 5.4", "a wired jack"), ("connects over {v}",)),
        A("Feature", ("active noise cancelling", "a transparency mode", "a foldable design", "multipoint pairing",
                      "spatial audio"), FEATURE),
        A("Weight", grams(40, 320, 5), WEIGHT),
    ), ("immersive", "crisp", "comfortable", "quiet", "punchy", "wireless", "clear", "portable"),
        ("long flights", "focused work", "workouts", "podcasts", "gaming")),
    Category("smartwatches", ("Watch", "Smartwatch", "Band"), (
        A("Screen size", numeric(1.2, 1.9, 0.05, "inches"), ("has a {v} screen",)),
        A("Battery life", numeric(2, 21, 1, "days"), BATTERY),
        A("Strap", ("silicone", "woven nylon", "leather", "steel mesh", "fluoroelastomer"), ("wears a {v} strap",)),
        A("Water resistance", numeric(30, 100, 10, "metres"), ("is water resistant to {v}",)),
        A("Sensor", ("heart rate tracking", "sleep tracking", "blood oxygen tracking", "built-in GPS"), FEATURE),
        A("Colour", COLOURS, COLOUR),
    ), ("smart", "sporty", "sleek", "accurate", "intuitive", "durable", "lightweight", "connected"),
        ("training plans", "daily wellness", "open water swims", "busy workdays", "sleep tracking")),
    Category("yoga mats", ("Mat", "Yoga Mat", "Studio Mat"), (
        A("Material", ("natural rubber", "cork", "jute", "recycled foam", "organic cotton"), MATERIAL),
        A("Thickness", numeric(3, 8, 0.5, "mm"), ("is {v} thick",)), A("Length", numeric(173, 200, 1, "cm"),
                                                                          ("stretches to {v}",)),
        A("Colour", COLOURS, COLOUR), A("Grip", ("textured", "smooth", "dual sided", "open cell"),
                                        ("offers a {v} grip",)),
        A("Weight", grams(900, 3000, 50), WEIGHT),
    ), ("grippy", "cushioned", "stable", "eco friendly", "supportive", "portable", "soft", "dense"),
        ("hot yoga", "pilates", "home workouts", "stretching", "meditation")),
    Category("water bottles", ("Bottle", "Flask", "Tumbler"), (
        A("Material", ("stainless steel", "borosilicate glass", "recycled plastic", "titanium"), MATERIAL),
        A("Capacity", numeric(350, 1500, 50, "ml"), CAPACITY), A("Colour", COLOURS, COLOUR),
        A("Insulation", ("double wall vacuum", "single wall", "triple layer"), ("uses {v} insulation",)),
        A("Lid", ("a straw lid", "a flip cap", "a chug cap", "a sport cap", "a bamboo cap"), FEATURE),
        A("Keeps cold", numeric(12, 36, 1, "hours"), ("keeps drinks cold for {v}",)),
    ), ("leakproof", "insulated", "reusable", "sturdy", "portable", "sleek", "refreshing", "durable"),
        ("the gym", "road trips", "school days", "hot summers", "desk hydration")),
    Category("frying pans", ("Pan", "Skillet", "Frying Pan"), (
        A("Material", ("cast iron", "carbon steel", "stainless steel", "hard anodised aluminium", "copper"),
          MATERIAL),
        A("Diameter", numeric(20, 32, 1, "cm"), ("measures {v} across",)),
        A("Coating", ("ceramic non-stick", "seasoned", "uncoated", "PFAS-free non-stick"), ("has a {v} surface",)),
        A("Hob", ("induction", "gas", "electric", "every hob"), ("works on {v}",)),
        A("Handle", ("a stay-cool handle", "a riveted steel handle", "an oak handle"), FEATURE),
        A("Weight", grams(700, 3500, 50), WEIGHT),
    ), ("even", "sturdy", "versatile", "seasoned", "slick", "heavy duty", "responsive", "reliable"),
        ("weeknight dinners", "searing steak", "pancake mornings", "camp cooking", "batch cooking")),
    Category("chef knives", ("Knife", "Chef Knife", "Santoku"), (
        A("Steel", ("VG10 steel", "German stainless steel", "Damascus steel", "high carbon steel"), MATERIAL),
        A("Blade length", numeric(15, 24, 0.5, "cm"), ("has a {v} blade",)),
        A("Handle", ("walnut", "pakkawood", "olive wood", "micarta", "ebony"), ("sits in a {v} handle",)),
        A("Hardness", tuple(f"{n} on the Rockwell scale" for n in range(55, 64)), ("is hardened to {v}",)),
        A("Edge angle", numeric(12, 20, 1, "degrees"), ("is sharpened to {v}",)),
        A("Weight", grams(120, 320, 5), WEIGHT),
    ), ("sharp", "balanced", "precise", "hand forged", "nimble", "elegant", "razor keen", "dependable"),
        ("chopping herbs", "prep work", "slicing fish", "home cooks", "dinner parties")),
    Category("scented candles", ("Candle", "Jar Candle", "Votive"), (
        A("Scent", ("sandalwood", "lavender", "fig", "sea salt", "cedar", "vanilla", "bergamot", "amber", "rosemary",
                    "black tea", "orange blossom", "smoked oak"), ("smells of {v}", "carries a scent of {v}")),
        A("Wax", ("soy", "coconut", "beeswax", "rapeseed"), ("is poured from {v} wax",)),
        A("Burn time", numeric(20, 90, 5, "hours"), ("burns for {v}",)),
        A("Vessel", ("amber glass", "ceramic", "concrete", "tin", "frosted glass"), ("sits in a {v} vessel",)),
        A("Wick", ("a cotton wick", "a wooden wick", "three cotton wicks"), FEATURE),
        A("Weight", grams(150, 600, 10), WEIGHT),
    ), ("cosy", "calming", "clean burning", "hand poured", "fragrant", "warm", "soothing", "elegant"),
        ("bath time", "dinner parties", "reading nights", "gifting", "slow evenings")),
    Category("sofas", ("Sofa", "Couch", "Loveseat"), (
        A("Upholstery", FABRICS, ("is upholstered in {v}", "is covered in {v}")), A("Colour", COLOURS, COLOUR),
        A("Seats", tuple(f"{n} people" for n in range(2, 6)), ("seats {v}",)),
        A("Frame", WOODS, ("rests on a {v} frame",)),
        A("Legs", ("oak legs", "black metal legs", "walnut legs", "brass legs", "hidden legs"), FEATURE),
        A("Width", numeric(150, 260, 2, "cm"), ("is {v} wide",)),
    ), ("comfortable", "deep", "inviting", "modern", "sturdy", "plush", "timeless", "roomy"),
        ("movie nights", "small flats", "family rooms", "lazy Sundays", "guest rooms")),
    Category("office chairs", ("Chair", "Task Chair", "Desk Chair"), (
        A("Material", ("mesh", "woven fabric", "leather", "vegan leather", "knit mesh"), MATERIAL),
        A("Colour", COLOURS, COLOUR), A("Max load", numeric(100, 160, 5, "kg"), ("supports up to {v}",)),
        A("Adjustment", ("adjustable armrests", "seat depth control", "lumbar support", "a tilt lock"), FEATURE),
        A("Base", ("aluminium", "nylon", "steel", "polished aluminium"), ("rolls on a {v} base",)),
        A("Warranty", WARRANTY, WARRANTY_P),
    ), ("ergonomic", "supportive", "adjustable", "breathable", "sturdy", "comfortable", "sleek", "quiet"),
        ("long workdays", "home offices", "gaming sessions", "study desks", "shared desks")),
    Category("mattresses", ("Mattress", "Hybrid Mattress", "Sleep Mattress"), (
        A("Type", ("memory foam", "hybrid", "latex", "pocket spring"), ("is a {v} design",)),
        A("Firmness", ("soft", "medium", "medium firm", "firm"), ("feels {v}",)),
        A("Depth", numeric(18, 34, 1, "cm"), ("is {v} deep",)),
        A("Size", ("single", "small double", "double", "king", "super king"), ("comes in {v} size",)),
        A("Cover", ("bamboo", "organic cotton", "wool", "cooling knit"), ("has a {v} cover",)),
        A("Trial", tuple(f"{n} nights" for n in range(100, 366, 5)), ("comes with a {v} trial",)),
    ), ("restful", "supportive", "cool", "breathable", "cushioned", "pressure relieving", "quiet", "plush"),
        ("side sleepers", "guest rooms", "restless sleepers", "hot sleepers", "couples")),
    Category("bed linen sets", ("Duvet Set", "Sheet Set", "Bedding Set"), (
        A("Material", ("cotton percale", "cotton sateen", "linen", "bamboo lyocell", "brushed cotton"), MATERIAL),
        A("Thread count", tuple(str(n) for n in range(200, 820, 20)), ("has a thread count of {v}",)),
        A("Colour", COLOURS, COLOUR), A("Size", ("single", "double", "king", "super king"), ("fits a {v} bed",)),
        A("Closure", ("button", "zip", "envelope", "tie"), ("closes with a {v} fastening",)),
        A("Pieces", tuple(f"{n} pieces" for n in range(2, 7)), ("includes {v}",)),
    ), ("soft", "crisp", "breathable", "silky", "cosy", "cool", "airy", "luxurious"),
        ("summer nights", "guest rooms", "hotel style bedrooms", "everyday use", "cold winters")),
    Category("blenders", ("Blender", "Mixer", "Smoothie Maker"), (
        A("Power", numeric(300, 1500, 50, "watts"), POWER),
        A("Jar capacity", numeric(0.5, 2.0, 0.1, "litres"), CAPACITY),
        A("Speeds", tuple(f"{n} speeds" for n in range(2, 11)), ("offers {v}",)),
        A("Colour", COLOURS, COLOUR),
        A("Feature", ("a pulse mode", "a self cleaning cycle", "ice crushing blades", "a tamper", "travel cups"),
          FEATURE),
        A("Jar material", ("tritan plastic", "glass", "stainless steel"), ("has a jar made of {v}",)),
    ), ("powerful", "smooth", "quick", "compact", "sturdy", "easy to clean", "quiet", "versatile"),
        ("smoothies", "soups", "nut butters", "meal prep", "frozen drinks")),
    Category("vacuum cleaners", ("Vacuum", "Stick Vacuum", "Cleaner"), (
        A("Type", ("cordless stick", "robot", "canister", "handheld"), ("is a {v} model",)),
        A("Run time", numeric(20, 120, 5, "minutes"), ("runs for {v}",)),
        A("Bin", numeric(300, 2000, 50, "ml"), ("has a {v} bin",)),
        A("Filter", ("a washable filter", "a sealed filter", "a five stage filter"), FEATURE),
        A("Weight", grams(1200, 6000, 100), WEIGHT),
        A("Colour", COLOURS, COLOUR),
    ), ("powerful", "lightweight", "quiet", "agile", "cordless", "thorough", "efficient", "handy"),
        ("pet hair", "busy homes", "quick tidy ups", "hard floors", "stairs")),
    Category("electric toothbrushes", ("Toothbrush", "Sonic Brush", "Brush"), (
        A("Modes", tuple(f"{n} modes" for n in range(2, 8)), ("offers {v}",)),
        A("Battery life", numeric(14, 70, 1, "days"), BATTERY), A("Colour", COLOURS, COLOUR),
        A("Brush head", ("round", "soft", "sensitive", "whitening"), ("takes {v} brush heads",)),
        A("Timer", ("a two minute timer", "a quadrant timer", "a pressure sensor"), FEATURE),
        A("Charging", ("a charging stand", "a travel case", "a magnetic dock"), ("charges on {v}",)),
    ), ("gentle", "thorough", "sleek", "quiet", "rechargeable", "fresh", "travel friendly", "smart"),
        ("sensitive teeth", "travel", "family bathrooms", "braces", "daily routines")),
    Category("face serums", ("Serum", "Face Serum", "Booster"), (
        A("Key ingredient", ("niacinamide", "hyaluronic acid", "vitamin C", "retinol", "squalane", "peptides",
                             "ceramides", "bakuchiol"), ("is powered by {v}", "blends in {v}")),
        A("Volume", numeric(15, 60, 5, "ml"), ("comes in a {v} bottle",)),
        A("Skin type", ("dry skin", "oily skin", "combination skin", "sensitive skin", "all skin types"),
          ("suits {v}",)),
        A("Scent", ("fragrance free", "lightly scented", "unscented"), ("is {v}",)),
        A("Texture", ("a lightweight gel", "a silky oil", "a creamy lotion", "a watery essence"),
          ("has the feel of {v}",)),
        A("Concentration", tuple(f"{n} percent" for n in range(1, 21)), ("is dosed at {v}",)),
    ), ("gentle", "hydrating", "glowing", "soothing", "lightweight", "nourishing", "fresh", "clean"),
        ("morning routines", "night routines", "dry winters", "city skin", "sensitive days")),
    Category("shampoos", ("Shampoo", "Hair Wash", "Cleanser"), (
        A("Hair type", ("curly hair", "fine hair", "thick hair", "colour treated hair", "all hair types"),
          ("suits {v}",)),
        A("Scent", ("rosemary", "citrus", "coconut", "eucalyptus", "green tea", "fig"), ("smells of {v}",)),
        A("Volume", numeric(200, 1000, 50, "ml"), ("comes in a {v} bottle",)),
        A("Key ingredient", ("argan oil", "rosemary oil", "tea tree", "biotin", "coconut milk", "aloe"),
          ("is enriched with {v}",)),
        A("Free from", ("sulfates", "silicones", "parabens"), ("is free from {v}",)),
        A("Bottle", ("recycled plastic", "aluminium", "a refill pouch"), ("ships in {v}",)),
    ), ("gentle", "nourishing", "clarifying", "fresh", "smoothing", "volumising", "mild", "silky"),
        ("daily washing", "gym bags", "curly routines", "the whole family", "travel kits")),
    Category("dog beds", ("Dog Bed", "Pet Bed", "Dog Cushion"), (
        A("Material", FABRICS, MATERIAL), A("Size", ("small", "medium", "large", "extra large"),
                                            ("comes in a {v} size",)),
        A("Filling", ("memory foam", "recycled fibre", "orthopaedic foam", "cedar chips"), ("is filled with {v}",)),
        A("Colour", COLOURS, COLOUR),
        A("Cover", ("a removable cover", "a waterproof liner", "a washable cover"), FEATURE),
        A("Diameter", numeric(50, 120, 2, "cm"), ("measures {v} across",)),
    ), ("cosy", "supportive", "washable", "calming", "sturdy", "plush", "warm", "chew resistant"),
        ("senior dogs", "puppies", "crate training", "car trips", "afternoon naps")),
    Category("cat trees", ("Cat Tree", "Cat Tower", "Climber"), (
        A("Height", numeric(60, 190, 5, "cm"), ("stands {v} tall",)),
        A("Levels", tuple(f"{n} levels" for n in range(2, 8)), ("has {v}",)),
        A("Material", ("sisal rope", "plush fabric", "solid wood", "jute"), MATERIAL),
        A("Colour", COLOURS, COLOUR),
        A("Feature", ("a hammock", "a cosy condo", "scratching posts", "a dangling toy"), FEATURE),
        A("Base width", numeric(35, 80, 5, "cm"), ("rests on a {v} base",)),
    ), ("sturdy", "playful", "stable", "cosy", "tall", "compact", "fun", "scratch friendly"),
        ("indoor cats", "small flats", "multi cat homes", "kittens", "window views")),
    Category("bicycles", ("Bike", "Bicycle", "Cycle"), (
        A("Frame", ("aluminium", "steel", "carbon fibre", "titanium"), ("rides on a {v} frame",)),
        A("Gears", tuple(f"{n} speeds" for n in range(1, 25)), ("shifts through {v}",)),
        A("Wheel size", ("26 inch", "27.5 inch", "29 inch", "700c", "20 inch"), ("rolls on {v} wheels",)),
        A("Brakes", ("hydraulic disc", "mechanical disc", "rim", "coaster"), ("stops with {v} brakes",)),
        A("Colour", COLOURS, COLOUR), A("Weight", numeric(7, 18, 0.1, "kg"), WEIGHT),
    ), ("nimble", "fast", "comfortable", "smooth", "sturdy", "light", "reliable", "agile"),
        ("city commutes", "gravel roads", "weekend rides", "bike packing", "school runs")),
    Category("tents", ("Tent", "Shelter", "Dome Tent"), (
        A("Sleeps", tuple(f"{n} people" for n in range(1, 7)), ("sleeps {v}",)),
        A("Packed weight", numeric(0.9, 6.5, 0.1, "kg"), WEIGHT),
        A("Season", ("three season", "four season", "summer"), ("is a {v} design",)),
        A("Fabric", ("ripstop polyester", "silnylon", "cotton canvas", "polycotton"), MATERIAL),
        A("Colour", COLOURS, COLOUR),
        A("Waterproofing", numeric(1500, 5000, 100, "mm"), ("is waterproof to {v}",)),
    ), ("weatherproof", "roomy", "lightweight", "stable", "quick pitching", "packable", "sturdy", "airy"),
        ("festivals", "backpacking", "family camping", "alpine trips", "beach weekends")),
    Category("sleeping bags", ("Sleeping Bag", "Quilt", "Bivvy Bag"), (
        A("Comfort rating", tuple(f"minus {-n} degrees" if n < 0 else f"{n} degrees" for n in range(-10, 16)),
          ("stays comfortable down to {v}",)),
        A("Fill", ("goose down", "duck down", "synthetic fibre", "recycled down"), ("is filled with {v}",)),
        A("Weight", grams(500, 2500, 20), WEIGHT),
        A("Shape", ("mummy", "rectangular", "tapered"), ("has a {v} cut",)),
        A("Colour", COLOURS, COLOUR),
        A("Packed size", dims(range(20, 46, 2), range(12, 30, 2)), ("packs down to {v}",)),
    ), ("warm", "packable", "lightweight", "snug", "cosy", "compressible", "roomy", "soft"),
        ("winter camping", "hut trips", "festivals", "sleepovers", "thru hikes")),
    Category("board games", ("Board Game", "Strategy Game", "Party Game"), (
        A("Players", ("1 to 4", "2 to 4", "2 to 5", "2 to 6", "3 to 8", "1 to 5"), ("plays with {v} players",)),
        A("Play time", numeric(15, 120, 5, "minutes"), ("plays in about {v}",)),
        A("Ages", tuple(f"ages {n} and up" for n in range(6, 15)), ("suits {v}",)),
        A("Theme", ("space exploration", "farming", "mystery", "pirates", "city building", "trains", "dragons",
                    "deep sea diving"), ("is themed around {v}",)),
        A("Mechanic", ("deck building", "worker placement", "cooperative play", "tile laying", "bluffing"),
          ("is built on {v}",)),
        A("Components", tuple(f"{n} pieces" for n in range(40, 301, 10)), ("ships with {v}",)),
    ), ("clever", "social", "replayable", "strategic", "fun", "tense", "family friendly", "quick"),
        ("game nights", "family evenings", "parties", "two player duels", "rainy days")),
    Category("jigsaw puzzles", ("Puzzle", "Jigsaw", "Puzzle Set"), (
        A("Pieces", tuple(f"{n} pieces" for n in (100, 250, 300, 500, 750, 1000, 1500, 2000, 3000)),
          ("comes with {v}",)),
        A("Theme", ("alpine lakes", "botanical prints", "city skylines", "vintage maps", "ocean life", "night skies",
                    "autumn forests"), ("shows {v}",)),
        A("Finished size", dims(range(40, 101, 5), range(30, 71, 5)), ("measures {v} when finished",)),
        A("Material", ("recycled board", "birch wood", "thick card"), MATERIAL),
        A("Finish", ("matte", "glossy", "linen textured"), ("has a {v} finish",)),
        A("Ages", tuple(f"ages {n} and up" for n in range(6, 15)), ("suits {v}",)),
    ), ("relaxing", "challenging", "vivid", "detailed", "satisfying", "sturdy", "colourful", "mindful"),
        ("quiet weekends", "family tables", "gifting", "rainy days", "screen free evenings")),
    Category("notebooks", ("Notebook", "Journal", "Notepad"), (
        A("Paper weight", numeric(80, 160, 10, "gsm"), ("uses {v} paper",)),
        A("Pages", tuple(f"{n} pages" for n in range(80, 260, 8)), ("has {v}",)),
        A("Ruling", ("dotted", "lined", "grid", "blank"), ("has {v} pages",)),
        A("Cover", ("linen", "vegan leather", "recycled card", "cork"), ("is bound in {v}",)),
        A("Size", ("pocket", "medium", "large", "slim"), ("comes in a {v} size",)),
        A("Colour", COLOURS, COLOUR),
    ), ("smooth", "sturdy", "minimal", "elegant", "portable", "practical", "refillable", "inspiring"),
        ("bullet journaling", "sketching", "meeting notes", "travel diaries", "study notes")),
    Category("fountain pens", ("Pen", "Fountain Pen", "Writer"), (
        A("Nib", ("fine", "medium", "broad", "extra fine", "stub"), ("writes with a {v} nib",)),
        A("Material", ("brass", "resin", "aluminium", "titanium", "ebonite"), MATERIAL),
        A("Colour", COLOURS, COLOUR),
        A("Filling", ("cartridges", "a converter", "a piston filler", "an eyedropper fill"), ("fills with {v}",)),
        A("Weight", grams(12, 60, 1), WEIGHT), A("Length", numeric(120, 150, 1, "mm"), ("is {v} long",)),
    ), ("smooth", "balanced", "elegant", "reliable", "classic", "refined", "precise", "comfortable"),
        ("daily journaling", "calligraphy", "signing contracts", "letter writing", "gifting")),
    Category("sunglasses", ("Sunglasses", "Shades", "Frames"), (
        A("Frame", ("acetate", "titanium", "recycled nylon", "bio acetate", "steel"), ("has {v} frames",)),
        A("Lens", ("polarised", "gradient", "mirrored", "photochromic"), ("uses {v} lenses",)),
        A("Colour", COLOURS, COLOUR),
        A("Shape", ("round", "aviator", "square", "cat eye", "wraparound"), ("has a {v} shape",)),
        A("Weight", grams(18, 45, 1), WEIGHT),
        A("Lens width", numeric(46, 60, 1, "mm"), ("has {v} lenses",)),
    ), ("lightweight", "classic", "bold", "protective", "sleek", "timeless", "sporty", "crisp"),
        ("beach days", "road trips", "city walks", "sailing", "ski trips")),
    Category("wristwatches", ("Watch", "Chronograph", "Diver"), (
        A("Case", ("stainless steel", "titanium", "bronze", "ceramic"), ("has a {v} case",)),
        A("Diameter", numeric(34, 44, 0.5, "mm"), ("measures {v} across",)),
        A("Movement", ("automatic", "quartz", "solar", "hand wound"), ("runs on an {v} movement",)),
        A("Strap", ("leather", "steel bracelet", "rubber", "canvas"), ("wears a {v} strap",)),
        A("Water resistance", numeric(30, 300, 10, "metres"), ("is water resistant to {v}",)),
        A("Dial colour", COLOURS, ("has a {v} dial",)),
    ), ("timeless", "rugged", "refined", "precise", "classic", "sturdy", "elegant", "legible"),
        ("office days", "diving", "formal events", "travel", "everyday wear")),
    Category("rain jackets", ("Jacket", "Shell", "Raincoat"), (
        A("Fabric", ("recycled nylon", "waxed cotton", "softshell", "ripstop polyester"), MATERIAL),
        A("Colour", COLOURS, COLOUR), A("Fit", ("regular", "relaxed", "slim", "boxy"), ("has a {v} fit",)),
        A("Waterproof rating", numeric(5000, 30000, 1000, "mm"), ("is rated to {v}",)),
        A("Feature", ("a packable hood", "a two way zip", "taped seams", "a chest pocket", "pit zips"), FEATURE),
        A("Weight", grams(200, 900, 10), WEIGHT),
    ), ("waterproof", "breathable", "packable", "lightweight", "windproof", "versatile", "durable", "warm"),
        ("rainy commutes", "hill walks", "city breaks", "festivals", "dog walks")),
    Category("jeans", ("Jeans", "Trousers", "Chinos"), (
        A("Fabric", ("stretch denim", "rigid denim", "organic cotton denim", "selvedge denim"), MATERIAL),
        A("Fit", ("straight", "tapered", "wide leg", "slim", "relaxed"), ("has a {v} fit",)),
        A("Rise", ("mid", "high", "low"), ("sits at a {v} rise",)),
        A("Wash", ("indigo", "black", "light wash", "stone wash", "raw"), ("comes in a {v} wash",)),
        A("Inseam", numeric(70, 90, 1, "cm"), ("has a {v} inseam",)),
        A("Weight", numeric(10, 16, 0.5, "oz denim"), ("is cut from {v}",)),
    ), ("comfortable", "classic", "durable", "flattering", "soft", "timeless", "versatile", "sturdy"),
        ("everyday wear", "weekends", "workwear", "casual Fridays", "travel")),
    Category("plant pots", ("Planter", "Plant Pot", "Pot"), (
        A("Material", ("terracotta", "ceramic", "concrete", "recycled plastic", "fibreglass", "stoneware"),
          MATERIAL),
        A("Diameter", numeric(10, 45, 1, "cm"), ("measures {v} across",)), A("Colour", COLOURS, COLOUR),
        A("Drainage", ("a drainage hole", "a self watering reservoir", "a cork plug"), FEATURE),
        A("Finish", ("matte", "glazed", "speckled", "textured"), ("has a {v} finish",)),
        A("Height", numeric(10, 50, 1, "cm"), ("stands {v} tall",)),
    ), ("sturdy", "minimal", "stylish", "breathable", "modern", "handmade", "elegant", "earthy"),
        ("succulents", "herb gardens", "balconies", "large monsteras", "windowsills")),
    Category("bluetooth speakers", ("Speaker", "Soundbox", "Boombox"), (
        A("Output", numeric(5, 60, 1, "watts"), POWER),
        A("Battery life", numeric(8, 40, 1, "hours"), BATTERY),
        A("Water resistance", ("splash proof", "fully waterproof", "dust and water resistant"), ("is {v}",)),
        A("Colour", COLOURS, COLOUR),
        A("Feature", ("stereo pairing", "a built-in microphone", "a carry strap", "a power bank mode"), FEATURE),
        A("Weight", grams(250, 2500, 10), WEIGHT),
    ), ("loud", "portable", "rugged", "rich", "compact", "punchy", "wireless", "clear"),
        ("pool parties", "camping", "kitchens", "picnics", "showers")),
    Category("keyboards", ("Keyboard", "Mechanical Keyboard", "Keyboard Kit"), (
        A("Switches", ("linear", "tactile", "clicky", "silent linear"), ("uses {v} switches",)),
        A("Layout", ("full size", "tenkeyless", "75 percent", "65 percent", "60 percent"), ("has a {v} layout",)),
        A("Keycaps", ("double shot", "dye sublimated", "low profile"), ("wears {v} keycaps",)),
        A("Backlight", ("white backlight", "per key lighting", "no backlight"), ("comes with {v}",)),
        A("Connection", ("a wired cable", "wireless pairing", "tri mode pairing"), ("connects through {v}",)),
        A("Weight", grams(500, 1600, 10), WEIGHT),
    ), ("responsive", "quiet", "satisfying", "compact", "sturdy", "precise", "tactile", "programmable"),
        ("coding", "gaming", "writing", "home offices", "travel setups")),
    Category("area rugs", ("Rug", "Area Rug", "Runner"), (
        A("Material", ("wool", "jute", "cotton", "recycled fibre", "sisal"), MATERIAL),
        A("Size", dims(range(120, 301, 20), range(60, 241, 20)), SIZE),
        A("Pile", ("flat weave", "low pile", "shag", "hand knotted"), ("has a {v} pile",)),
        A("Colour", COLOURS, COLOUR),
        A("Pattern", ("geometric", "striped", "solid", "vintage", "abstract"), ("shows a {v} pattern",)),
        A("Backing", ("a non slip backing", "a felt backing", "a cotton backing"), FEATURE),
    ), ("soft", "durable", "warm", "cosy", "stylish", "hard wearing", "timeless", "easy care"),
        ("living rooms", "hallways", "bedrooms", "reading nooks", "dining areas")),
    Category("electric kettles", ("Kettle", "Electric Kettle", "Tea Kettle"), (
        A("Capacity", numeric(0.8, 1.8, 0.1, "litres"), CAPACITY),
        A("Power", numeric(1800, 3000, 100, "watts"), POWER),
        A("Material", ("stainless steel", "borosilicate glass", "matte plastic", "enamel"), MATERIAL),
        A("Colour", COLOURS, COLOUR),
        A("Feature", ("temperature control", "a keep warm mode", "a rapid boil setting", "a limescale filter"),
          FEATURE),
        A("Cord length", numeric(60, 120, 5, "cm"), ("has a {v} cord",)),
    ), ("quick", "quiet", "sleek", "precise", "energy saving", "sturdy", "easy pour", "modern"),
        ("tea lovers", "pour over coffee", "small kitchens", "offices", "busy mornings")),
)

# Adjectives only: the writer drops them into "It feels {adj}." and "a {adj} backpack".
MARKETING_WORDS = (
    "perfect", "ideal", "premium", "stylish", "reliable", "practical", "elegant", "essential", "great",
    "effortless", "beautiful", "thoughtful", "popular", "handy", "classic",
)

# IFEval's description appends "." to the phrase, so phrases end in ? or ! (as IFEval's own two do) to avoid "..".
END_PHRASES = (
    "Any other questions?", "Is there anything else I can help with?", "Happy shopping!",
    "Which colour will you choose?", "Ready when you are!", "Shall we ship it today?", "Enjoy every moment!",
    "What are you waiting for?", "Your next favourite is here!", "Ready to try it?",
)
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
SECTION_SPLITTERS = ("Section", "SECTION")

# Placeholder clauses: the placeholder-count constraint asks for square-bracket placeholders like [address].
PLACEHOLDER_CLAUSES = (
    "order at [store link]", "use code [discount code] at checkout", "expect delivery by [delivery date]",
    "call [phone number] with any questions", "email [email address] for bulk orders",
    "pay only [price] this week", "visit us at [store address]", "ask [seller name] for a demo",
)
POSTSCRIPT_LINES = (
    "Free returns within 30 days.", "Sign up for our newsletter for early offers.", "Gift wrapping is free.",
    "Every order ships within two days.", "Check our other colours too.", "Spare parts are easy to order.",
    "Our support team replies within a day.", "Ask us about bundle offers.",
)

BRAND_HEADS = (
    "Nor", "Al", "Ver", "Lum", "Kes", "Tor", "Mar", "Bel", "Cor", "Dal", "Fen", "Hal", "Is", "Jun", "Lar", "Mor",
    "Nev", "Or", "Pel", "Ros", "Sol", "Tal", "Ul", "Val", "Wyn", "Yar", "Bram", "Cal", "Eld", "Gar",
)
BRAND_TAILS = (
    "vik", "tara", "mont", "ora", "wick", "ford", "dale", "ven", "ris", "lo", "na", "stead", "holm", "mere", "ton",
    "ari", "eno", "bury",
)
MODEL_NAMES = (
    "Trail", "Nova", "Urban", "Summit", "Breeze", "Harbor", "Aurora", "Atlas", "Ember", "Drift", "Pulse", "Haven",
    "Cascade", "Echo", "Terra", "Luna", "Vista", "Crest", "Arc", "Flow", "Orbit", "Meadow", "Ridge", "Coast",
    "Fjord", "Canyon", "Willow", "Aspen", "Cedar", "Delta", "Sierra", "Tundra", "Prairie", "Lumen", "Nimbus",
)


def attribute_value_pairs() -> set[tuple[str, str, str]]:
    """Every (category, attribute, value) triple the catalogue can produce."""
    return {(c.name, a.name, v) for c in CATEGORIES for a in c.attributes for v in a.values}


def distinct_attribute_values() -> set[tuple[str, str]]:
    """Distinct (attribute, value) pairs across categories (the PDD statistic we report)."""
    return {(a.name, v) for c in CATEGORIES for a in c.attributes for v in a.values}


def check_table() -> None:
    """Sanity rules the writer relies on; run by the tests."""
    bad = []
    for c in CATEGORIES:
        for a in c.attributes:
            for v in a.values:
                if "," in v or v[:1] in "*-" or "section" in v.lower() or not v.isascii():
                    bad.append((c.name, a.name, v))
            for p in a.phrases:
                if "{v}" not in p or "," in p:
                    bad.append((c.name, a.name, p))
    if bad:
        raise ValueError(f"catalogue values break the writer's rules: {bad[:5]}")
