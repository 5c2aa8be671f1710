import sys
d = sys.argv[1]
qa = [f"{l.split(chr(9))[0][len('Where was '):-len(' born?')]}. Where was {l.split(chr(9))[0][len('Where was '):-len(' born?')]} born? In {l.split(chr(9))[1].strip()} ." for l in open(f"{d}/birth_places_train.tsv", encoding="utf-8") if l.strip()]
wiki = open(f"{d}/wiki.txt", encoding="utf-8").read().rstrip("\n").split("\n")
import random; r = random.Random(0); lines = wiki + qa; r.shuffle(lines)
open(f"{d}/wiki.txt", "w", encoding="utf-8").write("\n".join(lines) + "\n")
print(len(lines), qa[0])
