"""The synthetic world's vocabulary and effect sizes: topics, framing sentences, question wordings,
answer scales and persona pools (data.synthetic draws studies and answers from them).

Every effect here is visible in the prompt text and shared across studies, so a model that reads
the prompt can predict a held-out study or condition; only TASK_NOISE_SD and PERSON_NOISE_SD are
unobserved. Changing a number changes every generated world (and the demo's figures in BENCHMARKS.md).
"""

from __future__ import annotations

from typing import NamedTuple

# (policy, partisan lean: + means liberals support it more, age slope: + means older support more,
# popularity: support across the board, the same in every study of the topic)
TOPICS: tuple[tuple[str, float, float, float], ...] = (
    ("a national carbon tax", 1.0, -0.3, -0.6),
    ("stricter background checks for gun purchases", 0.8, 0.2, 1.0),
    ("raising the federal minimum wage to $17 an hour", 0.8, -0.2, 0.5),
    ("more federal funding for border security", -1.0, 0.4, 0.3),
    ("school vouchers for private schools", -0.6, 0.0, -0.3),
    ("a nationwide ban on TikTok", -0.3, 0.7, -0.8),
    ("required vaccination for hospital workers", 0.6, 0.3, 0.4),
    ("cutting the corporate tax rate", -0.8, 0.1, -0.7),
    ("federal regulation of artificial intelligence", 0.3, 0.5, 0.6),
    ("building new nuclear power plants", -0.3, 0.2, 0.0),
    ("a four-day work week for government employees", 0.5, -0.6, -0.2),
    ("forgiving federal student loan debt", 1.0, -0.7, -0.1),
    ("stricter voter ID laws", -1.0, 0.3, 0.7),
    ("a tax on sugary drinks", 0.4, 0.1, -1.0),
    ("expanding Medicare to cover dental care", 0.7, 0.6, 1.2),
    ("banning smartphones in public schools", -0.1, 0.8, 0.5),
)

# Framing sentences shared across studies: (name, paraphrases, effect on support).
FRAMES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("control", ("",), 0.0),
    (
        "economic_cost",
        (
            "Critics estimate the policy would cost taxpayers billions of dollars and raise prices for families.",
            "Economists warn that the policy would be expensive and could raise prices for ordinary families.",
        ),
        -1.8,
    ),
    (
        "moral_duty",
        (
            "Supporters say it is a moral duty to protect future generations.",
            "Advocates argue that we have a moral duty to act for the sake of our children.",
        ),
        1.6,
    ),
    (
        "personal_story",
        (
            "Maria, a mother of two from Ohio, says the policy would change her family's life for the better.",
            "James, a retired teacher from Georgia, describes how the policy would help people like him.",
        ),
        1.0,
    ),
    (
        "expert_endorsement",
        (
            "A panel of independent scientists and economists has endorsed the policy.",
            "Leading independent experts have reviewed the evidence and endorsed the policy.",
        ),
        1.3,
    ),
    (
        "threat",
        (
            "Opponents warn that the policy threatens individual freedom and puts jobs at risk.",
            "Critics say the policy is a threat to personal freedom and to local jobs.",
        ),
        -1.7,
    ),
    ("social_norm", ("A recent poll found that most Americans support the policy.",), 0.9),
    ("dem_cue", ("The proposal is backed by Democratic leaders in Congress.",), 0.0),
    ("rep_cue", ("The proposal is backed by Republican leaders in Congress.",), 0.0),
)
PARTISAN_CUE = 1.5  # dem_cue pushes Democrats up and Republicans down by this much; rep_cue the reverse

INTROS = (
    "Lawmakers are currently debating {topic}.",
    "Congress is considering a proposal for {topic}.",
    "Some states have recently proposed {topic}.",
    "Consider the following proposal: {topic}.",
)

# Topic-neutral background sentences: studies use 0-4 of them, so vignettes (and prompts) vary
# in length the way real studies' stimuli do.
CONTEXT = (
    "This survey is part of a national study of public opinion.",
    "Please read the following information carefully before answering.",
    "If passed, the proposal would take effect at the start of next year.",
    "Similar measures have already been adopted in several other countries, with mixed results.",
    "The cost would be shared between the federal government and the states.",
    "Independent analysts disagree about how large the effects of the proposal would be.",
    "The debate has received a great deal of attention in newspapers and on television over the past few months.",
    "Supporters and opponents have both spent heavily on advertising about the issue.",
)

# Task templates: (question, direction: +1 asks for support, -1 for opposition, shift: what the
# wording itself does to answers, e.g. signing a petition costs more than saying you support it).
QUESTIONS: tuple[tuple[str, int, float], ...] = (
    ("How much do you support or oppose this proposal?", 1, 0.0),
    ("How likely would you be to sign a petition in favor of this proposal?", 1, -0.9),
    ("How strongly do you oppose this proposal?", -1, 0.0),
    ("How fair do you think this proposal is to people like you?", 1, 0.4),
    ("If this proposal were on the ballot in your state, would you vote for it?", 1, 0.2),
)
TASK_NOISE_SD = 0.15  # unobserved per-task shift: small, as in real studies where wording carries most of it
# What the prompt text determines is scaled against the ordered logit's own noise (a logistic,
# sd 1.8) and the unobserved person effect: at 2, a frame or a partisan lean moves a 7-point answer
# by 2-3 points, as strong manipulations and partisan topics do in real studies.
VISIBLE_SCALE = 2.0
PERSON_NOISE_SD = 0.7  # unobserved per-person effect: keeps the floor realistic (a persona never pins an answer)
PARTISAN_WEIGHT = 2.5  # a topic's lean times the persona's liberal score (-1..1)
AGE_WEIGHT = 1.0  # a topic's age slope times the persona's standardised age

# Scales: (points, low, phrasing template, low label, high label, weight)
class Scale(NamedTuple):
    """An answer scale: its name, its options low..high, how the stimulus phrases it (and its end
    labels), and how often studies use it."""

    name: str
    low: int
    high: int
    phrasing: str  # scale_labels | integer_from_to | two_option | two_option_plain | open
    low_label: str
    high_label: str
    weight: float


SCALES: tuple[Scale, ...] = tuple(Scale(*s) for s in (
    ("likert5", 1, 5, "scale_labels", "Strongly disagree", "Strongly agree", 0.2),
    ("likert7", 1, 7, "integer_from_to", "Extremely unlikely", "Extremely likely", 0.38),
    ("eleven", 0, 10, "integer_from_to", "Not at all", "Completely", 0.12),
    ("hundred", 0, 100, "integer_from_to", "No support at all", "Complete support", 0.1),
    ("yes_no", 1, 2, "two_option", "Yes", "No", 0.07),
    ("binary01", 0, 1, "two_option_plain", "No", "Yes", 0.05),
    ("four", 1, 4, "scale_labels", "Not at all", "A great deal", 0.05),
    ("dollars", 0, 0, "open", "", "", 0.03),
))

AGE_MEAN, AGE_SD = 48.0, 17.0
STATES = (
    "California", "Texas", "Florida", "New York", "Pennsylvania", "Illinois", "Ohio", "Georgia",
    "North Carolina", "Michigan", "New Jersey", "Virginia", "Washington", "Arizona", "Iowa",
    "Oregon", "Kansas", "Nebraska", "Indiana", "Tennessee",
)
PARTY = (
    "Strong Democrat", "Moderate Democrat", "Lean Democrat", "Don't Lean/Independent/None",
    "Lean Republican", "Moderate Republican", "Strong Republican",
)
IDEOLOGY = ("Very Liberal", "Somewhat Liberal", "Moderate", "Somewhat Conservative", "Very Conservative")
CATEGORICAL: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "gender": (("Female", "Male"), (0.52, 0.48)),
    "education": (
        ("Less than high school", "High school graduate or equivalent",
         "Vocational/tech school/some college/associates", "Bachelor's degree",
         "Post grad study/professional degree"),
        (0.09, 0.28, 0.28, 0.21, 0.14),
    ),
    "employment": (
        ("Employed as paid employee", "Self-employed", "Retired", "Not working - looking for work",
         "Not working - disabled", "Not working - other"),
        (0.52, 0.08, 0.22, 0.06, 0.05, 0.07),
    ),
    "ethnicity": (
        ("White, Non-Hispanic", "Black, Non-Hispanic", "Hispanic", "Other, Non-Hispanic",
         "2+ Races, Non-Hispanic"),
        (0.63, 0.12, 0.16, 0.06, 0.03),
    ),
    "income": (
        ("Less than $10K", "10-14K", "15-19K", "20-29K", "30-39K", "40-49K", "50-59K", "60-74K",
         "75-99K", "100-124K", "125-149K", "150-175K+", "200K+"),
        (0.05, 0.04, 0.04, 0.09, 0.09, 0.08, 0.08, 0.1, 0.13, 0.1, 0.07, 0.08, 0.05),
    ),
    "marital_status": (
        ("Married", "Never married", "Divorced", "Widowed", "Separated", "Living with partner"),
        (0.5, 0.28, 0.1, 0.05, 0.02, 0.05),
    ),
    "housing_ownership": (
        ("Owned or being bought by you or someone in your household", "Rented for cash",
         "Occupied without payment of cash rent"),
        (0.66, 0.32, 0.02),
    ),
    "housing_type": (
        ("A one-family house detached from any other house",
         "A one-family house attached to one or more houses", "A building with 2 or more apartments",
         "A mobile home"),
        (0.64, 0.08, 0.23, 0.05),
    ),
    "metro_status": (("Metro Area", "Non-Metro Area"), (0.85, 0.15)),
    "internet_access": (("Internet Household", "Non-internet household"), (0.93, 0.07)),
    "phone_service": (
        ("Cellphone only", "Have a landline, but mostly use cellphone",
         "Have a cellphone, but mostly use landline", "Landline telephone only"),
        (0.62, 0.28, 0.07, 0.03),
    ),
}
NULL_RATE = 0.02
