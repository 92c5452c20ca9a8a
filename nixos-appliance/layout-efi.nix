# Disk layout of the x86_64 appliance as the qemu-efi image lays it out (root labelled "nixos", EFI
# partition "ESP"), so that `nixos-rebuild switch --flake .#appliance` on an installed image keeps booting.
# Everything is a default: the image builders (system.build.images) override it with their own layout.
{ lib, modulesPath, ... }:

{
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
    autoResize = true;
  };
  fileSystems."/boot" = lib.mkDefault {
    device = "/dev/disk/by-label/ESP";
    fsType = "vfat";
    options = [ "umask=0077" ];
  };
  boot.growPartition = lib.mkDefault true;
  boot.loader.systemd-boot.enable = lib.mkDefault true;
  boot.loader.efi.canTouchEfiVariables = lib.mkDefault false;

  # Drivers for the hypervisors the qcow2 image is meant for (QEMU/KVM, Proxmox, libvirt).
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  # The ISO boots its own way, from a read-only image with its root in memory.
  image.modules.iso = {
    boot.loader.systemd-boot.enable = lib.mkImageMediaOverride false;
    boot.growPartition = lib.mkImageMediaOverride false;
  };
}
