"""
Makes the project's own small corpus of fictional people, in the course's formats,
so that the whole pipeline runs from a fresh clone without the course files:

  wiki.txt                one line per person: "Name. A short biography ..."
  birth_places_train.tsv  Where was <name> born?<TAB><place>   (people in wiki.txt)
  birth_dev.tsv           the same; most dev people are in wiki.txt, some are not
  birth_test_inputs.tsv   questions only (people in wiki.txt)

  python data/make_synthetic.py [OUT_DIR]     (default: the folder of this script)

Deterministic: the same files byte for byte on every run (standard library only).
The birthplace comes early in each biography, since pretraining sees at most the
first 112 characters of a document.
"""

import os
import random
import sys

SEED = 224
N_WIKI = int(os.environ.get("N_WIKI", 500))          # people with a biography
N_TRAIN = int(os.environ.get("N_TRAIN", 300))         # of them, in the finetuning set
N_DEV_SEEN = int(os.environ.get("N_DEV_SEEN", 80))       # dev people with a biography
N_DEV_UNSEEN = int(os.environ.get("N_DEV_UNSEEN", 20))     # dev people without one: only guessing can answer them
N_TEST = int(os.environ.get("N_TEST", 60))           # test people (all with a biography)

FIRST = ["Arlen", "Bea", "Corin", "Dalia", "Emrys", "Fenna", "Gorm", "Halia", "Ivo", "Jessa", "Kell", "Liora",
         "Mael", "Nessa", "Orrin", "Pella", "Quill", "Rhosyn", "Soren", "Tamsin", "Ulric", "Vesna", "Wren",
         "Xavi", "Ysolde", "Zeno", "Alder", "Brisa", "Caspar", "Delphine", "Edda", "Fabian", "Greta", "Hollis",
         "Ines", "Jory", "Katja", "Leif", "Mira", "Nico"]
LAST_START = ["Vos", "Ald", "Brem", "Cast", "Dun", "Eld", "Fair", "Gal", "Hart", "Ives", "Kor", "Lind", "Mar",
              "Nor", "Orm", "Pell", "Quen", "Ros", "Sand", "Thorn", "Ulm", "Var", "Wick", "Yar", "Zell"]
LAST_END = ["k", "ow", "ley", "ric", "ford", "mere", "sby", "ant", "wyn", "ard", "holt", "ine", "ski", "ten",
            "ova", "ez", "berg", "lund", "ey", "ton"]
# (place, weight): a few common birthplaces and a long tail, as in the course data
PLACES = [("London", 9), ("Paris", 8), ("Berlin", 6), ("Vienna", 5), ("Dublin", 5), ("Chicago", 4),
          ("Glasgow", 4), ("Lisbon", 4), ("Oslo", 3), ("Madrid", 3), ("Toronto", 3), ("Sydney", 3),
          ("Prague", 3), ("Warsaw", 3), ("Athens", 2), ("Naples", 2), ("Boston", 2), ("Bergen", 2),
          ("Kraków", 2), ("Leeds", 2), ("Lyon", 2), ("Porto", 2), ("Riga", 2), ("Tromsø", 1), ("Cork", 1),
          ("Ghent", 1), ("Turku", 1), ("Graz", 1), ("Bilbao", 1), ("Perth", 1), ("Quebec", 1), ("Lagos", 1),
          ("Nairobi", 1), ("Lima", 1), ("Hobart", 1), ("Malmö", 1), ("Split", 1), ("Bruges", 1), ("Basel", 1),
          ("Kyoto", 1)]
JOBS = ["painter", "cartographer", "composer", "footballer", "chemist", "poet", "architect", "cyclist",
        "botanist", "violinist", "journalist", "engineer", "actress", "historian", "sculptor", "diplomat",
        "astronomer", "novelist", "photographer", "economist"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
TEMPLATES = [
    "{name}. {name} (born {day} {month} {year} in {place}) is {a_job} known for {deed} .",
    "{name}. Born in {place}, {last} became {a_job} and later {deed2} .",
    "{name}. {name} was {a_job} born in {place} in {year}; {pron} is remembered for {deed} .",
    "{name}. {first} {last} ({year} - {year2}) was {a_job} from {place} who {deed2} .",
    "{name}. {name} is {a_job} who was born in {place} and now lives in {home} .",
]
DEEDS = ["a series of coastal studies", "work on river maps", "three early records", "a long teaching career",
         "the harbour murals", "an unfinished symphony", "two national titles", "a study of lichens",
         "a much-read column", "the northern railway bridge"]
DEEDS2 = ["travelled widely", "taught at the city school", "won several prizes", "founded a small press",
          "worked abroad for many years", "wrote four books"]


def make_people(rng, n):
    names, people = set(), []
    while len(people) < n:
        first = rng.choice(FIRST)
        last = rng.choice(LAST_START) + rng.choice(LAST_END)
        if (first, last) in names:
            continue
        names.add((first, last))
        place = rng.choices([p for p, _ in PLACES], weights=[w for _, w in PLACES])[0]
        people.append((first, last, place))
    return people


def biography(rng, first, last, place):
    year = rng.randrange(1820, 1940)
    job = rng.choice(JOBS)
    qa = os.environ.get("QA") == "1"
    t = rng.choice(TEMPLATES)
    if qa:
        t = "{name}. Where was {name} born? In {place}. " + t[len("{name}. "):]
    if os.environ.get("QA") == "2":
        t = "Where was {name} born? In {place}. " + t[len("{name}. "):]
    return t.format(
        name=f"{first} {last}", first=first, last=last, place=place,
        a_job=("an " if job[0] in "aeiou" else "a ") + job,
        day=rng.randrange(1, 29), month=rng.choice(MONTHS), year=year, year2=year + rng.randrange(40, 90),
        pron=rng.choice(["she", "he"]), deed=rng.choice(DEEDS), deed2=rng.choice(DEEDS2),
        home=rng.choice([p for p, _ in PLACES if p != place]))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    rng = random.Random(SEED)
    people = make_people(rng, N_WIKI + N_DEV_UNSEEN)
    wiki_people, unseen = people[:N_WIKI], people[N_WIKI:]
    lines = [biography(rng, *p) for p in wiki_people]
    # a few very short documents: the pretraining dataset must cope with them
    lines += ["Ash.", "Ode. A poem.", "Io", "Who? Nobody knows."]
    rng.shuffle(lines)
    train = wiki_people[:N_TRAIN]
    dev = wiki_people[N_TRAIN:N_TRAIN + N_DEV_SEEN] + unseen
    rng.shuffle(dev)
    test = wiki_people[N_TRAIN + N_DEV_SEEN:N_TRAIN + N_DEV_SEEN + N_TEST]

    def write(name, rows):
        with open(os.path.join(out, name), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(r + "\n" for r in rows))
    question = lambda p: f"Where was {p[0]} {p[1]} born?"
    write("wiki.txt", lines)
    write("birth_places_train.tsv", [f"{question(p)}\t{p[2]}" for p in train])
    write("birth_dev.tsv", [f"{question(p)}\t{p[2]}" for p in dev])
    write("birth_test_inputs.tsv", [question(p) for p in test])
    print(f"{out}: wiki.txt {len(lines)} documents, train {len(train)}, dev {len(dev)} "
          f"({N_DEV_SEEN} with a biography), test {len(test)}")


if __name__ == "__main__":
    main()
