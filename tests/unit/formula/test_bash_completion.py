"""The bash completion of the host command, rendered from the command's own table.

salt/pairvm/files/pairvm.bash-completion is a Jinja template of
``pairvmlib.commands.completion_spec()`` (the state pairvm.host.config renders
it through ``pairvm_host.commands``); this renders it the same way and checks
it offers exactly the table's commands, flags and words. (The completion's
behaviour in bash is in tests/functional/test_host_tools.py.)
"""

import re

import jinja2

from pairvmlib import commands
from tests.unit.conftest import REPO

cli = commands
SOURCE = (REPO / "salt/pairvm/files/pairvm.bash-completion").read_text()
TEXT = jinja2.Environment().from_string(SOURCE).render(spec=commands.completion_spec())


def completion_cases():
    """``{command: (flags, values)}`` of the completion's ``case`` arms."""
    cases = {}
    for names, body in re.findall(r"^ {8}([a-z_ |]+)\)(.*?);;", TEXT, re.M | re.S):
        flags = re.search(r'flags="([^"]*)"', body)
        values = re.search(r'values="([^"]*)"', body)
        for name in names.replace(" ", "").split("|"):
            cases[name] = (set(flags[1].split()) if flags else set(),
                           set(values[1].split()) if values else set())
    return cases


def test_completion_lists_exactly_the_commands():
    listed = re.search(r'local commands="([^"]*)"', TEXT)[1].split()
    assert listed == list(cli.COMMANDS)


def test_every_command_taking_a_vm_completes_vm_names_and_the_flags_and_words_of_its_forms():
    cases = completion_cases()
    for name, forms in cli.FORMS.items():
        synopses = " ".join(form.synopsis for form in forms)
        if all(len(form.synopsis.split()) < 2 or form.synopsis.split()[1] != "NAME" for form in forms):
            continue
        assert name in cases, f"completion does not complete {name}"
        assert cases[name][0] == set(re.findall(r"--[a-z-]+", synopses)), name
        choices = [c for c in re.findall(r"\w+(?:\|\w+)+", synopses) if not c.startswith("NAME|")]
        assert cases[name][1] == {word for c in choices for word in c.split("|") if word.islower()}, name
    assert "vms=yes" not in TEXT.split("create)")[1].split(";;")[0]  # a new VM is not in /machines yet


def test_no_jinja_comment_opener_in_the_bash_text():
    # `{#` would start a Jinja comment (the file is rendered with template: jinja).
    assert "{#" not in SOURCE.replace("{#-", "").replace("{%-", "")
    assert "{{" not in TEXT and "{%" not in TEXT


def test_the_vm_names_offered_follow_the_naming_rule():
    assert "=~ ^[a-z][a-z0-9-]{0,11}$ ]]" in TEXT
