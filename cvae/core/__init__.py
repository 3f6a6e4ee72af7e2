"""What every stage shares: params (`config`), errors, atomic writes, progress, the CelebA file
layout, the attribute rules, seeding, parallel work and figure provenance."""
