"""`store.url: null`: no tenancy. The config's keys still work and nothing is limited or
recorded; the tenancy endpoints say so, and the admin key still guards the pool view."""

import httpx
import openai

from support import KEY_ALPHA, make_config
from tenancy_testkit import ADMIN_KEY


def test_without_a_store_config_keys_work_and_tenancy_endpoints_say_it_is_off(zoo_dir, start_server):
    server = start_server(make_config(zoo_dir, store={"url": None}, admin={"key": ADMIN_KEY, "key_env": None}))
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY_ALPHA, max_retries=0, timeout=60)
    assert client.completions.create(model="mux-2m", prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    off = httpx.get(server.base_url + "/v1/admin/teams", headers=admin)
    assert off.status_code == 404 and "disabled" in off.json()["error"]["message"]
    assert httpx.get(server.base_url + "/v1/reports/usage", headers=admin).status_code == 404
    assert isinstance(httpx.get(server.base_url + "/v1/pool", headers=admin).json(), list)
    team = httpx.get(server.base_url + "/v1/pool", headers={"authorization": f"Bearer {KEY_ALPHA}"})
    assert team.status_code == 403
