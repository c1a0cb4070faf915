"""The runbook as the rehearsal reads it (workspace/deploy/): its blocks and tables, the
fx batching, the checkout stand-in and the mover. Fast: no fx, no namespaces.
(`make test-deploy` runs the runbook itself: tests/test_deploy_hosts.py.)"""
from pathlib import Path

import pytest

from workspace.deploy.hosts import FX_BATCH, REPO, Rehearsal, batch_fx_lines
from workspace.deploy.network import Network
from workspace.deploy.runbook import ROLES, Runbook, RunbookError

RUNBOOK = REPO / "docs" / "deployment.md"
ENVIRONMENT = ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")  # variables the terminal blocks set or unset


def test_every_block_of_the_runbook_uses_only_its_placeholders_and_every_role_has_a_terminal():
    runbook = Runbook.parse(RUNBOOK)
    for name, block in runbook.blocks.items():
        # an upper-case word that is not a placeholder would reach bash unreplaced
        words = {w.strip("'\"/.:,()[]{}") for w in block.text.replace("_", " ").split()}
        unknown = {w for w in words if len(w) > 2 and w.isupper() and w.isalpha()} - \
            {p for name in (*runbook.placeholders, *ENVIRONMENT) for p in name.split("_")} - {"N"}
        assert not unknown, (name, unknown)
        assert runbook.used_placeholders(block.text) <= set(runbook.placeholders)
    for role in ROLES:
        assert f"{role}/terminal" in runbook.blocks and f"{role}/checkout" in runbook.blocks
    assert {b.name for b in runbook.blocks.values() if b.service} == {"coordinator/start", "site/start"}
    assert runbook.render("coordinator/sign", {"SITE": "rescue_a"}).splitlines()[-1] == \
        "fx collaborator certify --request-pkg col_rescue_a_to_agg_cert_request.zip"
    with pytest.raises(RunbookError, match=r"no value for \['SITE'\]"):
        runbook.render("site/start", {})


def test_a_malformed_tag_is_reported_with_its_file_and_line(tmp_path):
    text = RUNBOOK.read_text().replace("<!-- runbook: site/install -->\n```bash", "<!-- runbook: site/install -->\n")
    path = tmp_path / "deployment.md"
    path.write_text(text)
    line = text.splitlines().index("<!-- runbook: site/install -->") + 1
    with pytest.raises(RunbookError, match=rf"deployment.md:{line}: the line after the tag 'site/install'"):
        Runbook.parse(path)


def test_consecutive_fx_lines_run_in_one_process_and_nothing_else_changes():
    script = ("printf 'collaborators: []\\n' > plan/cols.yaml\n"
              "fx plan initialize -a agg.fed.test   # writes save/init.pbuf\n"
              "fx workspace certify\n"
              "cd ~/federation\n"
              "fx collaborator start -n site1\n")
    assert batch_fx_lines(script) == (
        "printf 'collaborators: []\\n' > plan/cols.yaml\n"
        f"python {FX_BATCH} 'plan initialize -a agg.fed.test' 'workspace certify'\n"
        "cd ~/federation\n"
        "fx collaborator start -n site1\n")


@pytest.fixture
def rehearsal(tmp_path):
    network = Network(["coordinator", "site1", "site2"], "coordinator", "agg.fed.test")  # never created
    return Rehearsal(tmp_path, Runbook.parse(RUNBOOK), network,
                     {"coordinator": "coordinator", "site1": "site", "site2": "site"}, {})


def test_the_mover_moves_what_the_travel_table_lists_and_refuses_everything_else(rehearsal):
    home = {name: m.home for name, m in rehearsal.machines.items()}
    for host, files in {"coordinator": ["federation/federation.zip", "federation/cert/ca/root-ca.crt",
                                        "federation/agg_to_col_site1_signed_cert.zip"],
                        "site1": ["federation/col_site1_to_agg_cert_request.zip",
                                  "federation/cert/client/col_site1.key"]}.items():
        for f in files:
            (home[host] / f).parent.mkdir(parents=True, exist_ok=True)
            (home[host] / f).write_text(f)
    assert rehearsal.move("federation.zip", "coordinator", "site2") == home["site2"] / "federation.zip"
    rehearsal.move("col_site1_to_agg_cert_request.zip", "site1", "coordinator")
    rehearsal.move("agg_to_col_site1_signed_cert.zip", "coordinator", "site1")
    assert (home["coordinator"] / "federation" / "col_site1_to_agg_cert_request.zip").is_file()
    assert (home["site1"] / "federation" / "agg_to_col_site1_signed_cert.zip").is_file()
    refused = [("col_site1.key", "site1", "coordinator"),  # a private key
               ("root-ca.crt", "coordinator", "site1"),  # not in the table
               ("col_site1_to_agg_cert_request.zip", "site1", "site2"),  # not between sites
               ("agg_to_col_site1_signed_cert.zip", "coordinator", "site2")]  # another site's certificate
    for name, source, target in refused:
        with pytest.raises(RunbookError, match="may not go from"):
            rehearsal.move(name, source, target)
    assert [m[0] for m in rehearsal.moved] == ["federation.zip", "col_site1_to_agg_cert_request.zip",
                                               "agg_to_col_site1_signed_cert.zip"]
    assert not (home["coordinator"] / "col_site1.key").exists() and not list(home["site2"].rglob("*cert*"))


def test_the_checkout_stand_in_copies_the_checkout_and_refuses_what_it_cannot_play(rehearsal, tmp_path):
    rehearsal.checkout("site1")
    code = rehearsal.machines["site1"].home / "code"
    assert (code / "src" / "federated" / "admission.py").is_file()  # new files travel like tracked ones
    assert (code / ".venv").resolve() == (REPO / ".venv").resolve() and not (code / "data" / "synthetic").exists()
    text = RUNBOOK.read_text().replace("cd code && git checkout COMMIT\n", "cd code && git checkout COMMIT\npip install .\n")
    path = Path(tmp_path / "deployment.md")
    path.write_text(text)
    rehearsal.runbook = Runbook.parse(path)
    with pytest.raises(RunbookError, match="cannot stand in for `pip install .`"):
        rehearsal.checkout("site2")
