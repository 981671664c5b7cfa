"""What Parley relies on from the MongoDB-compatible server under it, checked on the one the
tests run (FerretDB built by deploy/deps.sh).

Contacts, groups, members and settings change by compare-and-swap: read a document, then
update it with the version read in the filter, so that of two concurrent changes one finds no
match and reads again. That needs MongoDB's single-document atomicity; FerretDB 1.24 did not
have it (a concurrent update could overwrite another and both report a match), which
deploy/local/ferretdb-atomic-update.patch fixes.

A conversation's reads (history, range pulls, unread counts) filter on `conv`. FerretDB 1.24
on SQLite read the whole collection for them; deploy/local/ferretdb-sqlite-pushdown.patch
searches the index on the fields deploy/infra.sh names instead.
"""
import os
import threading
import uuid

import pytest

import pymongo


def test_compare_and_swap_updates_are_atomic(mongo):
    col = mongo["test_cas"]
    col.drop()
    col.insert_one({"_id": "x", "version": 0, "marks": 0})
    wins = []
    errors = []

    def worker():
        # A client of its own, so the threads' commands really run side by side.
        client = pymongo.MongoClient(mongo.client.address[0], mongo.client.address[1])
        c = client[mongo.name]["test_cas"]
        try:
            for _ in range(60):
                v = c.find_one({"_id": "x"})["version"]
                r = c.update_one({"_id": "x", "version": v}, {"$set": {"version": v + 1}})
                if r.matched_count:
                    wins.append(v)
                # Another field changed by a plain $set, as mark_emitted does beside the swaps:
                # it must not bring back an older version.
                c.update_one({"_id": "x"}, {"$inc": {"marks": 1}})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    doc = col.find_one({"_id": "x"})
    col.drop()
    # Every successful swap moved the version by one, from a version no other swap used.
    assert sorted(wins) == list(range(len(wins))), "two swaps matched the same version"
    assert doc["version"] == len(wins), (doc, len(wins))
    assert doc["marks"] == 8 * 60, doc


@pytest.mark.skipif(os.environ.get("PARLEY_DB_BACKEND", "sqlite") != "sqlite",
                    reason="the pushdown patch is for FerretDB's SQLite storage")
def test_a_conversation_is_searched_in_its_index(mongo):
    """The pushdown is on: a find on `conv` reads only the documents whose `conv` is that
    string. Shown with a document that breaks the promise the pushdown relies on (a string in
    every document): an array holding the value, which MongoDB's equality (and a full scan)
    would match, and the index search cannot."""
    probe = "probe:" + uuid.uuid4().hex
    ids = [probe + "-string", probe + "-array"]
    mongo.messages.insert_many([{"_id": ids[0], "conv": probe, "seq": 1},
                                {"_id": ids[1], "conv": [probe], "seq": 2}])
    try:
        got = sorted(d["_id"] for d in mongo.messages.find({"conv": probe, "seq": {"$gt": 0}}))
        # A $or of such equalities is searched term by term (`recent`'s shape).
        either = sorted(d["_id"] for d in mongo.messages.find(
            {"$or": [{"conv": probe}, {"sender": "nobody:" + probe}], "seq": {"$gt": 0}}))
        # An _id beside other conditions is searched by _id (an edit's shape).
        by_id = [d["_id"] for d in mongo.messages.find({"_id": ids[1], "conv": {"$eq": probe}})]
        # {$eq: x} is the same equality, in a shape the patch leaves to the scan.
        scanned = sorted(d["_id"] for d in mongo.messages.find({"conv": {"$eq": probe}}))
    finally:
        mongo.messages.delete_many({"_id": {"$in": ids}})
    assert got == [ids[0]], got
    assert either == [ids[0]], either
    assert by_id == [ids[1]], by_id
    assert scanned == sorted(ids), scanned
