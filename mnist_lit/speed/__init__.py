"""The speed layer (`fast=true`): grouped training steps that call the module, and the Lightning internals
they need, each tested."""
