"""Portfolio onboarding shared by the status API (upload, status) and the onboarding service."""
