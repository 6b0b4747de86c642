"""The documents' map of files stays true: leasehold_kit.doclinks finds what a document names
that the tree does not have (scripts/test runs it over the README and docs/)."""

from leasehold_kit import doclinks


def test_the_documents_name_only_paths_that_exist():
    assert doclinks.main([]) == 0


def test_a_moved_file_is_reported(tmp_path):
    doc = tmp_path / "map.md"
    doc.write_text(
        "The keeper is `Sources/LeaseholdCoordinator/LeaseKeeper.swift`, not "
        "`Sources/LeaseholdCoordinator/Keeper.swift`; see `GroupCommit.swift`, `Gone.swift` and "
        "[the store](/nonexistent/Store.swift). Reports go to `deploy/drills/reports/`.\n"
    )
    names = {p.name for p in doclinks.ROOT.joinpath("Sources").rglob("*.swift")}
    problems = doclinks.missing_in(doc, names)
    assert problems == [
        f"{doc}: link /nonexistent/Store.swift",
        f"{doc}: path Sources/LeaseholdCoordinator/Keeper.swift",
        f"{doc}: file Gone.swift",
    ]
