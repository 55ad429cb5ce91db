"""Test helpers shared by unit and integration tests: kstatus verdicts and Argo CD health."""
