"""The seven HAM10000 diagnosis classes and the 3x3 location grid: the one place that names them.

Everything that writes or reads a diagnosis or a location (synthetic data, annotation, answers,
rewards, evaluation) imports these constants, so the label order never drifts between modules.
"""

from __future__ import annotations

# Alphabetical, as HAM10000's `dx` codes are usually listed; this is the label order of every
# confusion matrix and probability vector in the project.
CLASS_CODES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

CLASS_NAMES: dict[str, str] = {
    "akiec": "actinic keratoses and intraepithelial carcinoma",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesions",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevi",
    "vasc": "vascular lesions",
}

# Other ways a model (or a person) names a class. Lower-case; matched as whole words.
CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    "akiec": (
        "actinic keratosis",
        "actinic keratoses",
        "bowen's disease",
        "bowens disease",
        "intraepithelial carcinoma",
    ),
    "bcc": ("basal cell carcinoma", "basal-cell carcinoma"),
    "bkl": (
        "benign keratosis",
        "benign keratosis-like lesion",
        "benign keratosis-like lesions",
        "seborrheic keratosis",
        "solar lentigo",
        "lichen planus-like keratosis",
    ),
    "df": ("dermatofibroma",),
    "mel": ("melanoma",),
    "nv": ("nevus", "naevus", "nevi", "melanocytic nevus", "melanocytic nevi", "mole"),
    "vasc": ("vascular lesion", "vascular lesions", "angioma", "angiokeratoma", "pyogenic granuloma"),
}

# Image counts per class in the HAM10000 release (Tschandl et al. 2018): the default class mix.
HAM10000_CLASS_COUNTS: dict[str, int] = {
    "akiec": 327,
    "bcc": 514,
    "bkl": 1099,
    "df": 115,
    "mel": 1113,
    "nv": 6705,
    "vasc": 142,
}

VERTICAL_BANDS: tuple[str, ...] = ("top", "center", "bottom")
HORIZONTAL_BANDS: tuple[str, ...] = ("left", "center", "right")
# "{v}-{h}", row-major from top-left; index = 3 * row + col.
LOCATIONS: tuple[str, ...] = tuple(f"{v}-{h}" for v in VERTICAL_BANDS for h in HORIZONTAL_BANDS)


def location_from_point(x: float, y: float, width: int, height: int) -> str:
    """The 3x3 cell (true thirds of the image) that contains point (x, y), as "{v}-{h}".

    Points on a cut line go to the lower/right cell; points outside the image are clamped into it.
    """
    col = min(2, max(0, int(3 * x // width)))
    row = min(2, max(0, int(3 * y // height)))
    return f"{VERTICAL_BANDS[row]}-{HORIZONTAL_BANDS[col]}"


def spatial_description(location: str) -> str:
    """The seed's sentence form of a location, kept for its JSON/CSV schema."""
    return f"lesion located in {location} region"
