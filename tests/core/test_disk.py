from pathlib import Path

from fedveil.core.disk import owner_id, owner_state_dir


def test_owner_state_dir_keeps_the_on_disk_name(tmp_path):
    # existing runs hold ε ledgers under clients/client_K: the spelling is a contract
    assert owner_id(3) == "client_3"
    assert owner_state_dir(tmp_path, 3) == tmp_path / "clients" / "client_3"
    assert owner_state_dir(str(tmp_path), "client_3") == owner_state_dir(tmp_path, 3)
    assert isinstance(owner_state_dir("out", 0), Path)
