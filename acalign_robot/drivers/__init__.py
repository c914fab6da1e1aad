"""The driver process (torch-free): `server` puts one Driver (MuJoCo, log playback, loopback, a robot's SDK)
behind the control channel, with the watchdog that applies the safe action when the controller goes quiet.

`base` is the contract a driver implements; `remote_env` is the client side, a gymnasium Env over a served driver.
Import the submodules directly; this file stays free of imports.
"""
